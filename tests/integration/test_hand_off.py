"""Hand-offs are pipelined (issue 19): a runner slow to acknowledge its assignment holds back only
its own jobs. The pool's other runners keep taking work while that hand-off waits for its answer,
where a drain used to wait for every runner of its step (up to the ack timeout) before the next."""

from __future__ import annotations

import asyncio

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import JobAssigned, Reply
from tests import factories
from tests.support import agent, eventually

POOL = "p"


async def test_a_runner_that_does_not_answer_its_hand_off_holds_back_only_its_own_job(
    settings: Settings, store: Store, bus: Bus
) -> None:
    # An ack timeout longer than the test's patience: a drain that waited for it would fail here.
    settings = settings.model_copy(update={"assign_ack_timeout_s": 60.0})
    await factories.pool(store, POOL)
    answer = asyncio.Event()
    asked = asyncio.Event()

    async def mute(event: JobAssigned) -> Reply:  # a runner stuck before it could answer
        asked.set()
        await answer.wait()
        return Reply(ok=False)

    await factories.runner(store, "mute", pool=POOL)
    muted = await bus.subscribe(bus.subjects.assign.at("mute"), mute)
    runtime = Runtime(settings, ["capacity", "dispatch"])
    good = agent(settings, bus, runner_id="good", pool=POOL, labels=[], slots=1)
    try:
        await runtime.start()
        await good.start()  # registers with capacity
        await factories.queue(store, 4, pool=POOL, payload={"command": ["true"]})
        await asyncio.wait_for(asked.wait(), timeout=30)

        async def good_ran_three() -> bool:
            jobs = await store.job_list(pool=POOL, state="succeeded", key=None, limit=10)
            return len([j for j in jobs if j["runner_id"] == "good"]) >= 3

        # One slot, one job at a time: each of the three after the first needs a step of its own
        # while the mute runner's hand-off is still waiting.
        await eventually(good_ran_three, timeout=30, what="the answering runner to run the other jobs")
        assert not answer.is_set()
    finally:
        answer.set()
        await runtime.stop()
        await good.stop()
        await muted.unsubscribe()
