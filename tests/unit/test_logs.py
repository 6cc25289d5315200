"""Structured logs: one JSON object a line off a terminal, with the service, the ids the call
site gave and the trace the line belongs to."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from orchestrator import logs, telemetry


def test_json_lines_carry_service_job_and_trace_ids() -> None:
    stream = io.StringIO()  # not a terminal
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("orchestrator.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log = telemetry.get_logger("test_logs")
        span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1)))
        with trace.use_span(span):
            log.info("job %s started", "j-1", extra={"job_id": "j-1", "runner_id": "r-1"})
        log.warning("no trace here")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "job j-1 started" and first["level"] == "info"
    assert (first["service"], first["job_id"], first["runner_id"]) == ("test_logs", "j-1", "r-1")
    assert first["trace_id"] == format(0xABC, "032x") and first["span_id"] == format(0xDEF, "016x")
    assert second["service"] == "test_logs" and "trace_id" not in second


def test_a_terminal_gets_readable_lines(root_logger: logging.Logger) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    logs.configure("INFO", Tty())
    assert isinstance(root_logger.handlers[0].formatter, logs.TextFormatter)
    logs.configure("INFO", io.StringIO())
    assert isinstance(root_logger.handlers[0].formatter, logs.JsonFormatter)
