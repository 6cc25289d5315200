"""Admission: every decision through each of the three doors (HTTP, JetStream, request/reply),
the JetStream door's duplicates and poison, and a burst past max_active across two instances."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.pools import change_pool
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import AdmissionResult
from schemas.pools import PoolConfig
from services.admission import Admission
from tests.support import Listener, call, eventually

# What each door reports, normalized: (outcome or error code, error field, job id, retry-after seconds).
Outcome = tuple[str, str | None, str | None, float | None]
Door = Callable[[bytes], Awaitable[Outcome]]


async def put_pool(store: Store, bus: Bus, name: str, **config: Any) -> None:
    await change_pool(store, bus, name, config=PoolConfig(**config))


async def intake_drained(bus: Bus) -> bool:
    """Every message published so far acked or terminated: the intake (a work queue) keeps none.
    Not the consumer's counts: a message stored (its PubAck sent) reaches them a moment later,
    so they could read 0 and 0 before it, as they did once."""
    info = await bus.js.stream_info(bus.subjects.intake_stream)
    return info.state.messages == 0


async def rejections(store: Store) -> list[dict[str, Any]]:
    return await store.rejection_list(reason=None, limit=1000)


def http_door(http: aiohttp.ClientSession) -> Door:
    async def send(body: bytes) -> Outcome:
        async with http.post("/v1/jobs", data=body) as resp:
            got = await resp.json()
            retry = resp.headers.get("Retry-After")
        if "error" in got:
            return got["error"]["code"], got["error"]["field"], None, float(retry) if retry else None
        return {201: "admitted", 200: "existing"}[resp.status], None, got["id"], None

    return send


def request_door(bus: Bus) -> Door:
    async def send(body: bytes) -> Outcome:
        msg = await bus.nc.request(bus.subjects.submit_request.subject, body, timeout=5)
        result = AdmissionResult.model_validate_json(msg.data)
        if result.error is not None:
            return result.error.code, result.error.field, None, result.retry_after_s
        assert result.job is not None
        return result.outcome, None, str(result.job.id), None

    return send


def jetstream_door(bus: Bus, store: Store, admitted: Listener, rejected: Listener) -> Door:
    """Publish with a unique Nats-Msg-Id (so JetStream's own dedup stays out of the way), wait
    until the consumer has acked it, then read the decision where it was committed before the
    ack: a refusal recorded in `rejections`, a new job, or the job already there (no news). The
    news of a refusal or an admission must match it: its event is waited for, not looked up once
    (a flush returns before the subscription's callback has run)."""

    async def send(body: bytes) -> Outcome:
        msg_id = secrets.token_hex(8)
        try:
            key = json.loads(body).get("key") or msg_id
        except (ValueError, AttributeError):
            key = msg_id
        refused_before = len([r for r in await rejections(store) if r["key"] == key])
        jobs_before = await store.job_list(pool=None, state=None, key=key, limit=1)
        await bus.submit(body, key=msg_id)
        await eventually(lambda: intake_drained(bus), what="the intake to be drained")

        async def decided() -> tuple[list[dict[str, Any]]] | None:
            # The consumer's counts may be read before the message is counted: wait for the decision.
            refused = [r for r in await rejections(store) if r["key"] == key]
            if len(refused) > refused_before or jobs_before:
                return (refused,)
            return (refused,) if await store.job_list(pool=None, state=None, key=key, limit=1) else None

        (refused,) = await eventually(decided, what="the intake message to be decided")
        if len(refused) > refused_before:
            row = refused[0]  # newest first
            event = await rejected.wait(lambda e: e.key == key)
            rejected.events.remove(event)
            assert (row["reason"], row["field"]) == (event.reason, event.field)
            return event.reason, event.field, None, None
        [job] = await store.job_list(pool=None, state=None, key=key, limit=1)
        if jobs_before:
            return "existing", None, str(job["id"]), None
        event = await admitted.wait(lambda e: e.key == key)
        admitted.events.remove(event)
        assert event.job_id == job["id"]
        return "admitted", None, str(job["id"]), None

    return send


@pytest.fixture(params=["http", "jetstream", "request"])
async def door(request: pytest.FixtureRequest, front: Runtime, bus: Bus, http: aiohttp.ClientSession) -> Any:
    if request.param == "http":
        yield http_door(http)
    elif request.param == "request":
        yield request_door(bus)
    else:
        assert front.store is not None
        s = bus.subjects
        async with (
            Listener(bus, s.job_admitted.any()) as admitted,
            Listener(bus, s.job_rejected.any()) as rejected,
        ):
            yield jetstream_door(bus, front.store, admitted, rejected)


def body(**spec: Any) -> bytes:
    return json.dumps(spec).encode()


async def test_every_decision_is_the_same_through_every_door(door: Door, store: Store, bus: Bus) -> None:
    await put_pool(store, bus, "cpu", labels=["linux", "x86_64"], allowed_plans=["ci"], max_active=2)
    await put_pool(store, bus, "off", max_concurrent=0)
    refused = [
        (b"{not json", ("malformed", None)),
        (body(pool="cpu", priority="high"), ("invalid", "priority")),
        (body(pool="cpu", colour="red"), ("invalid", "colour")),
        (body(pool="cpu", plan="ci", payload={"x": "a\u0000b"}), ("invalid", "payload")),
        (body(pool="nowhere"), ("unsatisfiable", "pool")),
        (body(pool="cpu", plan="ci", labels=["gpu"]), ("unsatisfiable", "labels")),
        (body(pool="cpu", plan="nightly"), ("unsatisfiable", "plan")),
        (body(pool="cpu"), ("unsatisfiable", "plan")),  # a pool with allowed plans needs one of them
        (body(pool="off"), ("unsatisfiable", "pool")),
    ]
    for sent, expected in refused:
        code, field, job_id, _ = await door(sent)
        assert (code, field) == expected, sent
        assert job_id is None
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []

    job = body(pool="cpu", plan="ci", labels=["linux"], key="k1", payload={"command": ["true"]})
    first = await door(job)
    assert first[0] == "admitted"
    assert await door(job) == ("existing", None, first[2], None)
    assert (await door(body(pool="cpu", plan="ci", key="k1", priority=3)))[:2] == ("conflict", "key")
    assert (await door(body(pool="cpu", plan="ci", key="k2")))[0] == "admitted"
    code, field, _, retry = await door(body(pool="cpu", plan="ci", key="k3"))
    assert (code, field) == ("overloaded", "pool")
    if retry is not None:  # JetStream producers read the rejections table instead
        assert retry == 60  # nothing drained from the pool lately: the longest wait
    # A repeated key is answered even when the pool is full: a retry after a timeout is not shed.
    assert (await door(job))[:3] == ("existing", None, first[2])
    assert len(await store.job_list(pool="cpu", state="queued", key=None, limit=10)) == 2


async def test_a_command_that_is_not_a_list_of_strings_is_refused_at_every_door(
    door: Door, store: Store, bus: Bus
) -> None:
    """`payload.command`, when given, is a non-empty list of strings: anything else is refused at
    the door naming it (a JetStream producer gets a JobRejected), never admitted to fail when it
    runs. No command at all is a reservation, admitted."""
    await put_pool(store, bus, "cpu")
    for command in ("echo hi", [], ["echo", 1], [["echo"]], None, {"argv": ["echo"]}):
        code, field, job_id, _ = await door(body(pool="cpu", payload={"command": command}))
        assert (code, field, job_id) == ("invalid", "payload.command", None), command
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []
    for payload in ({"command": ["echo", "hi"]}, {}):
        assert (await door(body(pool="cpu", payload=payload)))[0] == "admitted", payload


async def test_an_env_that_is_not_names_to_strings_is_refused_at_every_door(door: Door, store: Store, bus: Bus) -> None:
    """`payload.env`, when given, maps non-empty names without '=' or NUL to strings: anything
    else is refused at the door naming it. It was admitted, and the runner ran the job with 1 as
    "1", null as "None", and `A=B` set as A."""
    await put_pool(store, bus, "cpu")
    bad = ({"A": 1}, {"A": None}, {"A": True}, {"A": ["x"]}, {"A=B": "x"}, {"": "x"}, {"A": "a\u0000"}, "A=1", ["A"])
    for env in bad:
        code, field, job_id, _ = await door(body(pool="cpu", payload={"command": ["env"], "env": env}))
        assert (code, field, job_id) == ("invalid", "payload.env", None), env
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []
    for payload in ({"command": ["env"], "env": {"CI": "1", "EMPTY": "", "lower_case.dot": "x=y"}}, {"env": {}}):
        assert (await door(body(pool="cpu", payload=payload)))[0] == "admitted", payload


async def test_retry_after_follows_the_pools_recent_drain(
    http: aiohttp.ClientSession, store: Store, bus: Bus, settings: Settings
) -> None:
    await put_pool(store, bus, "cpu", max_active=2)
    for i in range(5):
        async with http.post("/v1/jobs", json={"pool": "cpu", "key": f"d{i}"}) as resp:
            assert resp.status == (201 if i < 2 else 429)
    # Three jobs of the pool finished within the last minute: the pool drains one every 20 s.
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '10 seconds' WHERE key = 'd0'"
        )
        await conn.execute(
            "INSERT INTO jobs (id, key, spec, pool, shape_id, state, finished_at) "
            "SELECT gen_random_uuid(), 'old' || i, '{}', 'cpu', (SELECT shape_id FROM jobs WHERE key = 'd0'), "
            "'succeeded', now() - interval '30 seconds' FROM generate_series(1, 2) AS i"
        )
    finally:
        await conn.close()
    async with http.post("/v1/jobs", json={"pool": "cpu", "key": "d5"}) as resp:
        assert resp.status == 201  # d0 left: room for one
    async with http.post("/v1/jobs", json={"pool": "cpu", "key": "d6"}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "20"
        assert (await resp.json())["error"]["code"] == "overloaded"


async def test_the_same_job_twice_through_jetstream_is_one_row(front: Runtime, bus: Bus, store: Store) -> None:
    spec = body(pool="default", key="twice", payload={"command": ["true"]})
    await put_pool(store, bus, "default")
    await bus.submit(spec, key="twice")
    await bus.submit(spec, key="twice")  # dropped by JetStream's dedup window
    await bus.js.publish(bus.subjects.submit.subject, spec)  # no Nats-Msg-Id: the job key dedups it
    await eventually(lambda: intake_drained(bus), what="the intake to be drained")
    assert len(await store.job_list(pool=None, state=None, key="twice", limit=10)) == 1
    assert await rejections(store) == []


async def test_poison_is_terminated_recorded_and_never_redelivered(front: Runtime, bus: Bus, store: Store) -> None:
    await put_pool(store, bus, "default")
    await bus.submit(b"\x00\xff not json", key="poison-1")
    await bus.submit(body(pool="default", priority=[1]), key="poison-2")
    await bus.submit(body(pool="default", key="good"), key="good")
    await eventually(lambda: intake_drained(bus), what="the intake to be drained")
    info = await bus.js.consumer_info(bus.subjects.intake_stream, "admission")
    assert (info.num_redelivered, info.num_pending, info.num_ack_pending) == (0, 0, 0)
    stream = await bus.js.stream_info(bus.subjects.intake_stream)
    assert stream.state.messages == 0  # terminated and acked alike leave the work queue
    got = {r["key"]: r for r in await rejections(store)}
    assert got["poison-1"]["reason"] == "malformed"
    assert "\\u0000" in got["poison-1"]["body"]  # what was sent, as far as text can show it
    assert (got["poison-2"]["reason"], got["poison-2"]["field"]) == ("invalid", "priority")
    assert got["poison-2"]["stream_seq"] == 2
    assert len(await store.job_list(pool=None, state=None, key="good", limit=1)) == 1
    counted = front.metrics.count
    rejected = {reason: counted("orchestrator_jobs_rejected", reason=reason) for reason in ("malformed", "invalid")}
    assert rejected == {"malformed": 1, "invalid": 1}
    assert counted("orchestrator_jobs_admitted", pool="default") == 1


async def test_an_invalid_jetstream_body_is_recorded_under_the_pool_it_named(
    front: Runtime, bus: Bus, store: Store, http: aiohttp.ClientSession
) -> None:
    """A body that fails validation was recorded with `pool: null` (in `/v1/rejections` and its
    JobRejected) though it named one. A JSON object with a string `pool` keeps it, and the news
    goes to that pool's subject when a pool could be named so; else to `_invalid`, as before."""
    await put_pool(store, bus, "cpu")
    sent = {
        "priority": (body(pool="cpu", priority="high"), "cpu"),
        "bad-name": (body(pool="no such pool!", priority=1), "no such pool!"),
        "not-a-string": (body(pool=5), None),
        "not-an-object": (b'["cpu"]', None),
        "malformed": (b'{"pool": "cpu", oops', None),
    }
    s = bus.subjects
    async with Listener(bus, s.job_rejected.at("cpu")) as on_cpu, Listener(bus, s.job_rejected.at("_invalid")) as other:
        for key, (sent_body, _) in sent.items():
            await bus.submit(sent_body, key=key)
        await eventually(lambda: intake_drained(bus), what="the intake to be drained")
        _, answer = await call(http, "GET", "/v1/rejections")
        assert {r["key"]: r["pool"] for r in answer["rejections"]} == {key: pool for key, (_, pool) in sent.items()}
        told = await on_cpu.wait(lambda e: e.key == "priority")
        assert (told.pool, told.field) == ("cpu", "priority")
        for key, (_, pool) in sent.items():
            if key != "priority":
                assert (await other.wait(lambda e, key=key: e.key == key)).pool == pool, key
    assert [e.key for e in on_cpu.events] == ["priority"]


async def test_a_burst_past_max_active_sheds_exactly_the_excess(
    front: Runtime, settings: Settings, bus: Bus, store: Store, http: aiohttp.ClientSession
) -> None:
    """Two admission instances share the intake while HTTP producers submit too: exactly
    max_active jobs are admitted, every one of them is kept, and the rest are shed."""
    max_active, via_js, via_http = 15, 60, 20
    await put_pool(store, bus, "burst", max_active=max_active)
    assert front.store is not None
    second = Admission(settings.admission, front.store, front.bus)  # type: ignore[arg-type]
    await second.start()
    try:
        async with Listener(bus, bus.subjects.job_admitted.any()) as admitted:
            publish = [bus.submit(body(pool="burst", key=f"js{i}"), key=f"js{i}") for i in range(via_js)]

            async def post(i: int) -> tuple[int, dict[str, Any]]:
                async with http.post("/v1/jobs", json={"pool": "burst", "key": f"http{i}"}) as resp:
                    return resp.status, await resp.json()

            results = await asyncio.gather(*publish, *(post(i) for i in range(via_http)))
            await eventually(lambda: intake_drained(bus), what="the intake to be drained")
            responses = [r for r in results if r is not None]
            jobs = await store.job_list(pool="burst", state=None, key=None, limit=1000)
            await admitted.wait(lambda _: len(admitted.events) == len(jobs))
    finally:
        await second.stop()
    assert len(jobs) == max_active
    assert {j["state"] for j in jobs} == {"queued"}
    assert {e.job_id for e in admitted.events} == {j["id"] for j in jobs}
    created = {r["id"] for status, r in responses if status == 201}
    assert created <= {str(j["id"]) for j in jobs}
    shed_http = [r for status, r in responses if status == 429]
    assert all(r["error"]["code"] == "overloaded" for r in shed_http)
    assert len(created) + len(shed_http) == via_http
    shed_js = [r for r in await rejections(store) if r["reason"] == "overloaded"]
    assert len(shed_js) + len(shed_http) == via_js + via_http - max_active


async def test_a_store_refusal_that_is_not_bad_input_is_redelivered_not_terminated(
    front: Runtime, bus: Bus, store: Store
) -> None:
    """A read-only transaction (as after a failover to a replica), a full disk, a deadlock: the
    store refuses the batch, but the job is fine. It is redelivered until the store takes it;
    only bad input is ever terminated."""
    await put_pool(store, bus, "default")
    async with store.connection() as conn:
        await conn.execute("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = '25006'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON jobs EXECUTE FUNCTION refuse();
        """)
    await bus.submit(body(pool="default", key="kept"), key="kept")

    async def redelivered() -> bool:
        info = await bus.js.consumer_info(bus.subjects.intake_stream, "admission")
        return info.num_redelivered > 0

    await eventually(redelivered, what="the refused message to be redelivered")
    async with store.connection() as conn:
        await conn.execute("DROP TRIGGER refuse ON jobs")

    async def admitted() -> bool:
        return len(await store.job_list(pool=None, state=None, key="kept", limit=1)) == 1

    await eventually(admitted, what="the job to be admitted once the store takes it")
    assert await rejections(store) == []


async def test_keyless_jetstream_jobs_keep_distinct_keys_after_the_stream_is_made_anew(
    settings: Settings, bus: Bus, store: Store
) -> None:
    """Without a key, a JetStream job is keyed by its message. A stream made anew (its storage
    lost) numbers its messages from 1 again: a new job must not be taken for an old one."""
    await put_pool(store, bus, "default")
    for command in ("first", "second"):
        runtime = Runtime(settings, ["admission"], migrate=True)
        await runtime.start()
        try:
            await bus.js.publish(bus.subjects.submit.subject, body(pool="default", payload={"command": [command]}))
            await eventually(lambda: intake_drained(bus), what="the intake to be drained")
        finally:
            await runtime.stop()
        await bus.js.delete_stream(bus.subjects.intake_stream)
    jobs = await store.job_list(pool="default", state=None, key=None, limit=10)
    assert sorted(j["payload"]["command"][0] for j in jobs) == ["first", "second"]
    assert await rejections(store) == []
