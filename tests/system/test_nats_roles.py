"""deploy/nats.conf, the NATS of compose.yaml, against a real nats-server started with that same
file (issue 21, point 2). Each role connects with its own credentials, as its container does:

- a runner's cannot publish a job event, nor hear another runner's assignments or replies, nor
  have an answer (capacity's reply, a stored chunk of its own job's output) delivered onto the
  services' subjects: it is in an account of its own (nats.conf says why);
- a producer's cannot reach the runner subjects, nor create a consumer (whose deliver subject
  NATS would not check);
- each can do what it needs, and a job runs end to end: the real services on the `services`
  user, a real `orchestrator runner` process on its own user, a producer submitting over NATS and
  following the job-events stream with a durable consumer.

NATS reports a permissions violation asynchronously (nats-py's error callback): each refusal is
waited for, with a deadline; that nothing arrived is shown by a message sent after the refused
one arriving first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.bus.job_logs import JobLogs, LogChunk
from orchestrator.embedded import EmbeddedNats, free_port
from orchestrator.settings import Settings
from tests.support import eventually
from tests.system.nats_roles import (
    CONF,
    EVENTS,
    FAST_SETTINGS,
    FORGED,
    JS_API,
    LOGS,
    PASSWORD_VARIABLES,
    PASSWORDS,
    ROOT,
    Client,
    arrived,
    inbox_prefix,
    runner_process,
    settings_of,
)


@pytest.fixture
async def nats_conf_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A nats-server of this test's own, with deploy/nats.conf as compose mounts it."""
    for variable, password in PASSWORD_VARIABLES.items():
        monkeypatch.setenv(variable, password)
    store = Path(tempfile.mkdtemp(prefix="orch-test-nats-roles-"))
    server = EmbeddedNats(store / "js", args=["-c", str(CONF), "-m", str(free_port())])
    try:
        yield await server.start()
    finally:
        await server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
async def clients(nats_conf_url: str) -> AsyncIterator[dict[str, Client]]:
    connected = {user: await Client(user).connect(nats_conf_url) for user in PASSWORDS}
    yield connected
    for client in connected.values():
        await client.nc.close()


@pytest.fixture
async def services_bus(nats_conf_url: str) -> AsyncIterator[Bus]:
    """The services' bus, with the streams they create at start."""
    bus = Bus.from_settings(settings_of("services", nats_conf_url), name="services")
    await bus.connect()
    await bus.ensure_intake_stream()
    await bus.ensure_job_events_stream(3600)
    await JobLogs(bus).ensure_stream(3600, None)
    yield bus
    await bus.close()


async def stored(bus: Bus, stream: str) -> int:
    return (await bus.js.stream_info(stream)).state.messages


@pytest.mark.parametrize(("me", "other"), [("runner-1", "runner-2"), ("runner-2", "runner-1")])
async def test_a_runner_cannot_publish_a_job_event_nor_hear_another_runner(
    clients: dict[str, Client], services_bus: Bus, me: str, other: str
) -> None:
    runner, services = clients[me], clients["services"]
    events = await services.heard("orch.v1.jobs.finished.default")
    heartbeats = await services.heard("orch.v1.runners.heartbeat")
    await services.settle()
    await runner.nc.publish("orch.v1.jobs.finished.default", FORGED.encode())
    await runner.refused("Publish", "orch.v1.jobs.finished.default")
    await runner.nc.publish("orch.v1.runners.heartbeat", b"sent after")  # what it may send
    await eventually(arrived(heartbeats), what="the heartbeat sent after")
    assert events == [] and await stored(services_bus, EVENTS) == 0

    assignments = await clients[other].answer(f"orch.v1.runners.{other}.assign", b"taken by its runner")
    await clients[other].settle()
    overheard = await runner.heard(f"orch.v1.runners.{other}.assign")
    await runner.refused("Subscription", f"orch.v1.runners.{other}.assign")
    reply = await services.nc.request(f"orch.v1.runners.{other}.assign", b"a job", timeout=5)
    assert reply.data == b"taken by its runner" and len(assignments) == 1 and overheard == []
    # Nor its cancel notices, its replies, the services' replies, other runners' requests, the events.
    for subject in (
        f"orch.v1.runners.{other}.cancel",
        f"{inbox_prefix(other)}.>",
        "_INBOX.>",
        "orch.v1.runners.register",
        "orch.v1.jobs.finished.*",
        ">",
    ):
        await runner.nc.subscribe(subject)
        await runner.refused("Subscription", subject)


async def test_a_runner_cannot_have_an_answer_delivered_onto_the_services_subjects(
    clients: dict[str, Client], services_bus: Bus
) -> None:
    """NATS does not check a request's reply subject. A runner stores output it chose (allowed),
    then asks for it back with the job-events subject as the reply: from the services' account
    that would store it as a job event; from the runners' account the answer stays there."""
    runner, services = clients["runner-1"], clients["services"]
    ack = await runner.nc.request("orch.v1.logs.forged", FORGED.encode(), timeout=5)  # a JetStream publish
    seq = json.loads(ack.data)["seq"]
    get = json.dumps({"seq": seq}).encode()
    await runner.nc.publish(f"{JS_API}.DIRECT.GET.{LOGS}", get, reply="orch.v1.jobs.finished.default")
    answered = await services.answer("orch.v1.runners.heartbeat", b"capacity's answer")
    await services.settle()
    await runner.nc.publish("orch.v1.runners.heartbeat", b"{}", reply="orch.v1.jobs.finished.default")
    assert (await runner.nc.request(f"{JS_API}.DIRECT.GET.{LOGS}", get, timeout=5)).data == FORGED.encode()
    await eventually(arrived(answered), what="capacity to answer")
    await services.settle()  # its answer is out
    assert await stored(services_bus, EVENTS) == 0
    assert runner.errors == []  # nothing refused: the redirection itself is what accounts undo

    # The check sees a delivery when there is one: the same request from the services' account.
    await services.nc.publish(f"$JS.API.DIRECT.GET.{LOGS}", get, reply="orch.v1.jobs.finished.default")
    await eventually(lambda: stored(services_bus, EVENTS), what="the control delivery")


async def test_a_producer_cannot_reach_the_runner_subjects(clients: dict[str, Client], services_bus: Bus) -> None:
    producer, services = clients["producer"], clients["services"]
    finishes = await services.heard("orch.v1.runners.finish")
    submissions = await services.answer("orch.v1.jobs.submit.req", b"admitted")
    await services.settle()
    await producer.nc.publish("orch.v1.runners.finish", FORGED.encode())
    await producer.refused("Publish", "orch.v1.runners.finish")
    assert (await producer.nc.request("orch.v1.jobs.submit.req", b"{}", timeout=5)).data == b"admitted"
    assert finishes == [] and len(submissions) == 1

    assignments = await clients["runner-1"].answer("orch.v1.runners.runner-1.assign", b"ok")
    await clients["runner-1"].settle()
    overheard = await producer.heard("orch.v1.runners.runner-1.assign")
    await producer.refused("Subscription", "orch.v1.runners.runner-1.assign")
    assert (await services.nc.request("orch.v1.runners.runner-1.assign", b"a job", timeout=5)).data == b"ok"
    assert len(assignments) == 1 and overheard == []
    for subject in ("orch.v1.runners.*.cancel", "orch.v1.jobs.submit", "orch.v1.logs.*", "_INBOX_runner-1.>"):
        await producer.nc.subscribe(subject)
        await producer.refused("Subscription", subject)
    # No consumer of its own: a push consumer would deliver the stream wherever it says.
    for subject in (f"{JS_API}.CONSUMER.CREATE.{EVENTS}.mine", f"$JS.API.CONSUMER.CREATE.{EVENTS}.mine"):
        await producer.nc.publish(subject, b"{}")
        await producer.refused("Publish", subject)


async def test_each_role_can_do_what_it_needs(
    clients: dict[str, Client], services_bus: Bus, nats_conf_url: str
) -> None:
    services, producer = clients["services"], clients["producer"]
    # A runner, through the product's own bus and log code with its container's settings.
    runner_bus = Bus.from_settings(settings_of("runner-1", nats_conf_url), name="runner-1")
    await runner_bus.connect()
    try:
        assign = asyncio.get_running_loop().create_future()

        async def on_assign(msg: Msg) -> None:
            assign.set_result(msg.data)
            await msg.respond(b"acked")

        await runner_bus.nc.subscribe("orch.v1.runners.runner-1.assign", cb=on_assign)
        cancels = await runner_bus.nc.subscribe("orch.v1.runners.runner-1.cancel")
        await runner_bus.flush()
        assert (await services.nc.request("orch.v1.runners.runner-1.assign", b"job", timeout=5)).data == b"acked"
        assert await assign == b"job"
        await services.nc.publish("orch.v1.runners.runner-1.cancel", b"stop it")
        assert (await cancels.next_msg(timeout=5)).data == b"stop it"
        logs = JobLogs(runner_bus)
        job = uuid.uuid4()
        seqs = [await logs.append(job, LogChunk(offset=i, attempt=1, source="stdout", data=b"x"), {}) for i in range(2)]
        await logs.drop(seqs[0])  # trimming a long output
        assert [c.offset for c in [c async for c in logs.chunks(job)]] == [1]  # read back (a retry's start)
        await runner_bus.ping(5)  # its health check
    finally:
        await runner_bus.close()

    # A producer: the intake both ways, the events on core NATS and through a durable consumer.
    ack = await producer.nc.jetstream().publish(
        "orch.v1.jobs.submit", b'{"pool": "default"}', headers={"Nats-Msg-Id": "k1"}
    )
    assert ack.stream == "ORCH_INTAKE"
    await services.answer("orch.v1.jobs.submit.req", b"result")
    await services.settle()
    assert (await producer.nc.request("orch.v1.jobs.submit.req", b"{}", timeout=5)).data == b"result"
    core = await producer.heard("orch.v1.jobs.finished.*")

    async def publish_until_heard() -> bool:
        await services_bus.js.publish("orch.v1.jobs.finished.default", b'{"event": 1}')
        return bool(core)

    await eventually(publish_until_heard, what="the producer to hear a job event")
    await services_bus.js.add_consumer(
        EVENTS,
        ConsumerConfig(durable_name="ci", filter_subject="orch.v1.jobs.finished.>", ack_policy=AckPolicy.EXPLICIT),
    )
    pull = await producer.nc.jetstream(prefix=JS_API).pull_subscribe_bind("ci", EVENTS)
    fetched = await pull.fetch(1, timeout=5)
    assert fetched[0].data == b'{"event": 1}'
    await fetched[0].ack_sync()
    assert [(c.user, c.errors) for c in clients.values() if c.errors] == []


async def test_a_job_runs_end_to_end_with_every_role_on_its_own_credentials(
    nats_conf_url: str, settings: Settings, tmp_path: Path
) -> None:
    """The permissions are complete: the services, a runner process and a producer, each on its
    own user, run a job whose first attempt fails and prints past the log cap (store, trim,
    read where the output ended on the retry), and a plain one from the JetStream intake."""
    services = settings_of(
        "services",
        nats_conf_url,
        **settings.model_dump(include={"database_url", "data_dir", "http_port", *FAST_SETTINGS}),
        pools_file=ROOT / "deploy" / "pools.toml",  # compose's
    )
    runtime = Runtime(services, ["capacity", "admission", "dispatch", "api"])
    runner = runner_process(nats_conf_url, tmp_path)
    producer = await Client("producer").connect(nats_conf_url)
    await runtime.start()
    try:
        assert runtime.bus is not None
        await runtime.bus.js.add_consumer(  # made for the producer by the operator (README)
            EVENTS,
            ConsumerConfig(durable_name="ci", filter_subject="orch.v1.jobs.finished.>", ack_policy=AckPolicy.EXPLICIT),
        )
        runner.start()
        await runner.ready()
        marker = tmp_path / "second-attempt"
        long_output = "head -c 400000 /dev/zero | tr '\\0' x; echo"
        script = f"{long_output}; test -f {marker} && echo done && exit 0; touch {marker}; exit 1"
        flaky = {
            "pool": "default",
            "max_attempts": 2,
            "retry": {"on": ["failed"], "backoff_s": 0.1, "jitter": 0},
            "payload": {"command": ["sh", "-c", script]},
        }
        answer = await producer.nc.request("orch.v1.jobs.submit.req", json.dumps(flaky).encode(), timeout=10)
        result = json.loads(answer.data)
        assert result["outcome"] == "admitted", result
        plain = {"pool": "default", "key": "plain", "payload": {"command": ["echo", "hi"]}}
        await producer.nc.jetstream().publish(
            "orch.v1.jobs.submit", json.dumps(plain).encode(), headers={"Nats-Msg-Id": "plain"}
        )

        pull = await producer.nc.jetstream(prefix=JS_API).pull_subscribe_bind("ci", EVENTS)
        finished: dict[str, dict[str, Any]] = {}

        async def both_finished() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await pull.fetch(10, timeout=1):
                    event = json.loads(msg.data)
                    finished[event["job_id"]] = event
                    await msg.ack()
            return len(finished) == 2

        await eventually(both_finished, timeout=60, what="both jobs to finish")
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            async with http.get("/v1/jobs", params={"key": "plain"}) as resp:
                plain_id = (await resp.json())["jobs"][0]["id"]
            flaky_id = result["job"]["id"]
            assert {finished[flaky_id]["state"], finished[plain_id]["state"]} == {"succeeded"}
            assert finished[flaky_id]["attempt"] == 2
            async with http.get(f"/v1/jobs/{plain_id}/logs") as resp:
                assert await resp.text() == "hi\n"
            async with http.get(f"/v1/jobs/{flaky_id}/logs") as resp:
                output = await resp.text()
        assert "bytes of output left out here" in output  # trimmed: the runner deleted chunks
        assert "[orchestrator: attempt 2, on runner runner-1]" in output  # found where the output ended
        assert output.endswith("x\ndone\n")
        assert producer.errors == []
        assert "violation" not in runner.log().lower() and "dropped" not in runner.log()
    finally:
        await runner.close()
        await runtime.stop()
        await producer.nc.close()
