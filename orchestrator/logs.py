"""Log output: one JSON object a line when stderr is not a terminal (containers, CI, files), the
usual readable line when it is.

Every record carries its `service`, the current trace and span ids when a trace is under way
(also when spans are not recorded: the producer's context still travels, so a log line can be
found from a trace id and back), and whatever ids the call site gave in `extra` (`job_id`,
`runner_id`, `pool`, `action`). Secrets the settings name (tokens, passwords) are masked in
every line, as a net under the code's own care (URLs are shown redacted where they are logged).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from orchestrator.redact import Redactor

# Fields a call site may add with `extra=`; anything else stays off the line.
_EXTRA = ("service", "action", "job_id", "job_ids", "runner_id", "pool")


def _trace_ids() -> dict[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for name in _EXTRA:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, str | int | float | bool) else str(value)
        line.update(_trace_ids())
        if record.exc_info:
            line["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The readable line, with the trace id appended when there is one."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        text = self.redact(super().format(record))
        ids = _trace_ids()
        return f"{text} trace_id={ids['trace_id']}" if ids else text


class _Demoted(logging.Filter):
    """A library's INFO records as DEBUG ones: kept only where DEBUG is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def demote(logger: str) -> None:
    """Log what `logger` (a chatty library's) says at INFO at DEBUG instead; its warnings and
    errors stay as they are."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, _Demoted) for f in target.filters):
        target.addFilter(_Demoted())


def configure(level: str = "INFO", stream: Any = None, secrets: Iterable[str] = ()) -> None:
    """Route the root logger to `stream` (stderr), as JSON unless it is a terminal, with every
    one of `secrets` masked wherever it appears."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    redact = Redactor(secrets)
    handler.setFormatter(TextFormatter(redact) if stream.isatty() else JsonFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def mask(secrets: Iterable[str]) -> None:
    """Mask `secrets` too, from now on, in the lines of the log `configure` set up: those a process
    learns after its start (the embedded stack's generated ones, those of a system it joins)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter | TextFormatter):
            formatter.redact = formatter.redact.adding(secrets)
