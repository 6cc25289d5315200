"""Trace context read from message headers (orchestrator/telemetry.py) whatever their case: a Go
producer's NATS client sends `Traceparent`. The trace carried over a real bus is
tests/integration/test_bus.py."""

from __future__ import annotations

from opentelemetry import trace

from orchestrator import telemetry


def test_go_style_header_case_is_understood() -> None:
    ctx = telemetry.extract({"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert trace.get_current_span(ctx).get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
