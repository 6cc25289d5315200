"""One trace per job, exported over OTLP/HTTP, across a restart between admission and dispatch.

The services run as real `orchestrator serve` subprocesses with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a receiver in this test (an aiohttp `/v1/traces` handler decoding the protobuf), so
each process installs its own tracer provider, as in production. The test is the producer: its
span travels in the JetStream message's headers. The first process admits the job (no
dispatcher runs, so the job waits) and stops; a second one dispatches and runs it. Every span of
that job's life must share the producer's trace id and chain parent to child.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests.support import eventually

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "orchestrator"
PRODUCER, CONSUMER = 4, 5  # OTLP SpanKind values


class Receiver:
    """An OTLP/HTTP trace receiver: every span posted to /v1/traces, flattened."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")

    def find(self, scope: str, name: str | None = None) -> dict[str, Any] | None:
        for span in self.spans:
            if span["scope"] == scope and (name is None or span["name"] == name):
                return span
        return None


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class Serve:
    """`orchestrator serve <services>` as a subprocess, ready once its API printed its line."""

    def __init__(self, env: dict[str, str], log: Path, *services: str) -> None:
        self.env, self.log, self.services = env, log, services

    async def __aenter__(self) -> Serve:
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(BIN), "serve", *self.services, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.startswith(b"orchestrator ready"), f"not ready: {line!r}\n{self.log.read_text()[-3000:]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A graceful stop: the process exits normally and its tracer provider flushes at exit.
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 60) == 0, self.log.read_text()[-3000:]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


def _env(settings: Settings, receiver: Receiver, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "OTEL_"))}
    return {
        **env,
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_NAMESPACE": settings.namespace,
        "ORCH_DATA_DIR": str(tmp_path / "data"),
        "ORCH_HTTP_PORT": "0",
        "ORCH_RUNNER_LABELS": "linux",
        "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
        "ORCH_SWEEP_INTERVAL_S": "0.5",
        "ORCH_STOP_TIMEOUT_S": "2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


async def test_one_trace_from_producer_to_runner_across_a_restart(
    settings: Settings, store: Store, bus: Bus, receiver: Receiver, tmp_path: Path
) -> None:
    await store.pool_create_if_absent("default", ["linux"])
    env = _env(settings, receiver, tmp_path)
    log = tmp_path / "serve.log"
    # The producer: this test, with a tracer provider of its own (not the process-wide one,
    # which other tests run without), exporting to the same receiver.
    provider = TracerProvider(resource=Resource.create({"service.name": "producer"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    body = json.dumps({"pool": "default", "key": "traced", "payload": {"command": ["true"]}}).encode()

    async with Serve(env, log, "admission", "api"):  # no dispatcher: the job waits
        with provider.get_tracer("test.producer").start_as_current_span(
            f"send {bus.subjects.submit.subject}", kind=trace.SpanKind.PRODUCER, attributes={"messaging.system": "nats"}
        ) as producer:
            await bus.submit(body, key="traced")
        trace_id = format(producer.get_span_context().trace_id, "032x")

        async def queued() -> list[dict[str, Any]]:
            return await store.job_list(pool="default", state="queued", key="traced", limit=1)

        [job] = await eventually(queued, timeout=30, what="the job to be admitted")
    # The BatchSpanProcessor exports from its own thread, which needs this loop to answer it.
    await asyncio.to_thread(provider.shutdown)

    async with Serve(env, log, "all"):  # restarted: dispatch and the runner continue the trace

        async def succeeded() -> dict[str, Any] | None:
            row = await store.job_get(job["id"])
            return row if row and row["state"] == "succeeded" else None

        done = await eventually(succeeded, timeout=30, what="the job to succeed")

    assign = f"send {bus.subjects.assign.at(done['runner_id']).subject}"
    wanted = (
        ("test.producer", None),
        ("orchestrator.admission", f"process {bus.subjects.submit.subject}"),
        ("orchestrator.dispatch", "queued"),
        ("orchestrator.dispatch", assign),
        ("orchestrator.runner", "run"),
    )

    async def complete() -> bool:
        return all(receiver.find(scope, name) for scope, name in wanted)

    await eventually(complete, timeout=30, what=f"every span of the job; got {[s['name'] for s in receiver.spans]}")
    producer_span, admission, waited, dispatch, run = (receiver.find(scope, name) for scope, name in wanted)
    assert producer_span and admission and waited and dispatch and run
    for span in (producer_span, admission, waited, dispatch, run):
        assert span["trace_id"] == trace_id, span
    # Parent to child: producer → admission → (queued, dispatch) → run.
    assert admission["parent"] == producer_span["span_id"]
    assert waited["parent"] == dispatch["parent"] == admission["span_id"]
    assert run["parent"] == dispatch["span_id"]
    # Messaging conventions on the spans that cross NATS.
    assert (admission["kind"], dispatch["kind"], run["kind"]) == (CONSUMER, PRODUCER, CONSUMER)
    for span in (admission, dispatch, run):
        assert span["attributes"]["messaging.system"] == "nats"
    assert admission["attributes"]["messaging.destination.name"] == bus.subjects.submit.subject
    assert run["attributes"]["orchestrator.job_id"] == str(job["id"])
    # Admitted by the first process, dispatched and run by the second: the trace survived the restart.
    assert admission["service"] == "orchestrator-admission-api"
    assert dispatch["service"] == run["service"] == "orchestrator"
