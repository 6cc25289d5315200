"""Tracing setup and W3C trace-context carriers for NATS headers and stored jobs.

There is no official nats-py instrumentation, so the bus injects and extracts context itself.
The getter is case-insensitive: Go clients send `Traceparent`, the default getter misses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def setup(service_name: str = "orchestrator", *, record: bool | None = None) -> None:
    """Install the SDK tracer provider once per process when spans are wanted: by default when an
    OTLP endpoint is configured (exported over OTLP/HTTP, batched). Otherwise spans stay the API's
    no-ops, which cost next to nothing on the hot path and still carry a producer's incoming trace
    context through the bus and the queue (a non-recording span keeps its parent's ids)."""
    global _configured
    export = any(os.environ.get(var) for var in _ENDPOINT_VARS)
    if _configured or not (export if record is None else record):
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if export:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    """Export what is still batched: for a process that ends without running its exit handlers
    (a forked worker), where the provider's own shutdown at exit never comes."""
    provider = trace.get_tracer_provider()
    if _configured and isinstance(provider, TracerProvider):
        provider.shutdown()


def recording() -> bool:
    """Whether spans are recorded: callers skip building span links and attributes when not."""
    return _configured


class Tracer:
    """`start_as_current_span` that is free when nothing records: with no SDK installed it only
    makes `context` (an extracted producer context) current, so it still propagates onward."""

    def __init__(self, name: str) -> None:
        self.name = name

    @contextlib.contextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        links: Sequence[trace.Link] | None = None,
    ) -> Iterator[trace.Span]:
        if not _configured:
            token = otel_context.attach(context) if context is not None else None
            try:
                yield trace.get_current_span()
            finally:
                if token is not None:
                    otel_context.detach(token)
            return
        with trace.get_tracer(self.name).start_as_current_span(
            name, context=context, kind=kind, attributes=attributes, links=links
        ) as span:
            yield span


def tracer(name: str) -> Tracer:
    return Tracer(name)


class _CaseInsensitiveGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        key = key.lower()
        for k, v in carrier.items():
            if k.lower() == key:
                return [v]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_getter = _CaseInsensitiveGetter()


def inject(carrier: dict[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """The W3C headers of `context` (default: the current one) added to `carrier`."""
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier, context=context)
    return carrier


_W3C_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


def carrier(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Just the trace-context headers of `headers`, keys lower-cased: what extract + inject
    would give back, at a fraction of the cost (the admission hot path)."""
    return {k.lower(): v for k, v in (headers or {}).items() if k.lower() in _W3C_HEADERS}


def extract(carrier: Mapping[str, str] | None) -> Context:
    return propagate.extract(carrier or {}, getter=_getter)


class _ServiceLogger(logging.LoggerAdapter):
    """Adds `service` to every record and keeps the call's own `extra` (job ids and the like):
    the standard adapter replaces it."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def get_logger(service: str) -> logging.LoggerAdapter:
    return _ServiceLogger(logging.getLogger(f"orchestrator.{service}"), {"service": service})
