"""`POST /v1/jobs` (and Servo's enqueue) ask the admission service over NATS, as every door does.

While no admission instance answers (one reconnecting after its NATS node went down), the request
is asked again within `ADMISSION_TIMEOUT_S` when that is safe: nobody heard it (no responders),
or it has a key (a repeat is the same job). A keyless request that went unanswered may have been
admitted: it is not repeated, and the client is told the queue is unavailable.
"""

from __future__ import annotations

import time

from orchestrator.bus import Bus
from orchestrator.errors import NoAnswer, NoResponders
from orchestrator.retrying import Backoff
from orchestrator.store.transitions import UNAVAILABLE_RETRY_S
from schemas.events import AdmissionResult, JobSubmitted
from schemas.jobs import JobSpec

ADMISSION_TIMEOUT_S = 10.0
# One attempt of a keyed request: longer than admission's own retries while Postgres cannot take
# the job (so a request it is still working on is not asked again), and twice fits the timeout.
ATTEMPT_S = UNAVAILABLE_RETRY_S + 1.0


async def admit(bus: Bus, spec: JobSpec) -> AdmissionResult:
    """The admission service's answer for `spec`; NoAnswer / NoResponders when none came."""
    event = JobSubmitted(**spec.model_dump())
    began, backoff = time.monotonic(), Backoff(ADMISSION_TIMEOUT_S)
    while True:
        left = max(0.1, began + ADMISSION_TIMEOUT_S - time.monotonic())
        timeout = min(left, ATTEMPT_S) if spec.key is not None else left
        try:
            return await bus.request(bus.subjects.submit_request, event, timeout)
        except NoResponders as exc:
            await backoff.wait_or_raise(exc)
        except NoAnswer as exc:
            if spec.key is None:
                raise
            await backoff.wait_or_raise(exc)
