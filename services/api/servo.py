"""Servo's wire format (seed 003), so its runner-select client works against this server unchanged.

- `POST /profile/{pool}/enqueue?unique_id=U&qualified_repo=R&run_id=N` admits a reservation in
  the pool (a take-style job: it expires after 30 s without a take) and answers 200 with its
  token as the text body. A pool that could never run it is refused, as Servo refuses a profile
  no server targets: 422 with the reason. A unique_id already waiting or held: 409.
- `POST /take/{unique_id}?token=T[&wait=S]` is the take of `/v1/jobs/{id}/take`: 200 with the
  runner as JSON, 403 wrong token, 404 unknown, expired or ended, 503 with `Retry-After`.

As in Servo, errors are text (`curl --fail-with-body` shows them as they are), and a 503 has no
body at all. The unique_id,
repository and run id are kept in the job's payload (`payload.servo`), where `/take` finds them;
a unique_id is free again once its job has ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from orchestrator.store import Store
from orchestrator.tokens import token_matches
from schemas.api import RunnerView
from schemas.events import AdmissionResult, error_from_validation
from schemas.jobs import JobSpec
from services.api.params import QUALIFIED_REPO, RUN_ID, UNIQUE_ID, WAIT, BadParam
from services.api.responses import STATUS, json_response
from services.api.take import RETRY_AFTER_S, Takes
from services.api.tenancy import bound_tenant

Admit = Callable[[JobSpec], Awaitable[AdmissionResult]]


def text_error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers or None)


class ServoDoor:
    def __init__(self, store: Store, takes: Takes, admit: Admit) -> None:
        self.store = store
        self.takes = takes
        self.admit = admit

    async def enqueue(self, request: web.Request) -> web.Response:
        try:
            params = {p.name: p.parse(request) for p in (UNIQUE_ID, QUALIFIED_REPO, RUN_ID)}
        except BadParam as exc:  # as text, like every Servo error
            return text_error(422, str(exc))
        try:
            # A tenant's token enqueues its tenant's jobs (tenancy.py).
            spec = JobSpec(pool=request.match_info["pool"], payload={"servo": params}, tenant=bound_tenant(request))
        except ValidationError as exc:
            return text_error(422, f"profile: {error_from_validation(exc).message}")
        if await self.store.job_list_servo_live(params["unique_id"]):
            return text_error(409, f"Already in queue: {params['unique_id']!r}")
        result = await self.admit(spec)
        if result.error is not None:
            headers = {}
            if result.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, round(result.retry_after_s)))
            return text_error(STATUS.get(result.error.code, 422), result.error.message, **headers)
        assert result.token is not None
        return web.Response(text=result.token)

    async def take(self, request: web.Request) -> web.Response:
        try:
            wait_s = WAIT.parse(request)
        except BadParam as exc:
            return text_error(422, str(exc))
        unique_id = request.match_info["unique_id"]
        live = await self.store.job_list_servo_live(unique_id)
        if not live:
            return text_error(404, f"Not found: {unique_id!r}")
        token = request.query.get("token")
        mine = [job for job in live if token_matches(token, job["token_hash"])]  # every one compared
        if not mine:
            return text_error(403, f"Bad token: {unique_id!r}")
        result = await self.takes.take(mine[0]["id"], wait_s)
        if result.status == 200:
            assert result.runner is not None
            return json_response(RunnerView.from_row(result.runner))
        if result.status == 503:
            # No body, as Servo: `curl --retry` writes every attempt's body to its output, so the
            # client's output must be the runner's JSON alone.
            return web.Response(status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return text_error(result.status, result.message)
