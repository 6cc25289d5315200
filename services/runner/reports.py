"""The runner's requests that must be answered: permission to start a job and the report of its
end, each asked until capacity answers (ok, a duplicate, or refused as stale). A lost answer is
not a refusal (a repeated request is answered as a duplicate), and giving up would leave the job
to reconciliation. Requests for jobs that start or end together travel together (one message,
one reply)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from orchestrator.batching import Batcher
from orchestrator.bus import Bus, RequestTopic
from orchestrator.errors import RequestFailed
from orchestrator.retrying import retrying
from orchestrator.settings import RUNNER_REQUEST_TIMEOUT_S
from schemas.events import JobFinished, JobStarted, Reply

R = TypeVar("R")
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Reports:
    def __init__(self, bus: Bus, log: Log) -> None:
        self.bus = bus
        self.log = log
        self._starts: Batcher[JobStarted, Reply] = Batcher(self._send(bus.subjects.runner_start))
        self._finishes: Batcher[JobFinished, Reply] = Batcher(self._send(bus.subjects.runner_finish))

    def _send(self, topic: RequestTopic[Any, Reply]) -> Callable[[list[Any]], Awaitable[list[Reply]]]:
        async def send(events: list[Any]) -> list[Reply]:
            return await self.bus.request_many(topic, events, RUNNER_REQUEST_TIMEOUT_S)

        return send

    async def start(self, started: JobStarted) -> Reply:
        """Permission to start (refused: stale, another runner has it, or it was cancelled)."""
        what = f"start of {started.job_id}"
        return await until_answered(lambda: self._starts.submit(started), what, self.log, job_id=started.job_id)

    async def finish(self, ended: JobFinished) -> Reply:
        what = f"report of {ended.job_id}"
        return await until_answered(lambda: self._finishes.submit(ended), what, self.log, job_id=ended.job_id)


async def until_answered(send: Callable[[], Awaitable[R]], what: str, log: Log, **extra: Any) -> R:
    """`send()` a request until capacity answers (ok, a duplicate, or refused as stale); a
    lost answer is not a refusal. Retried after 0.1 s, doubling to 5 s."""
    return await retrying(send, retry_on=RequestFailed, what=what, log=log, first_s=0.1, max_s=5.0, extra=extra)
