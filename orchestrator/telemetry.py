"""Tracing setup and W3C trace-context carriers for NATS headers and stored jobs.

There is no official nats-py instrumentation, so the bus injects and extracts context itself.
The getter is case-insensitive: Go clients send `Traceparent`, the default getter misses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

_configured = False


def setup(service_name: str = "orchestrator") -> None:
    """Install an SDK tracer provider once per process, so spans carry real, propagated ids."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


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


def get_logger(service: str) -> logging.LoggerAdapter:
    return logging.LoggerAdapter(logging.getLogger(f"orchestrator.{service}"), {"service": service})
