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
from services.api.responses import STATUS, json_response, wait_or_why
from services.api.take import MAX_WAIT_S, RETRY_AFTER_S, Takes

Admit = Callable[[JobSpec], Awaitable[AdmissionResult]]
PARAMS = ("unique_id", "qualified_repo", "run_id")
MAX_PARAM_LEN = 256


def text_error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers or None)


class ServoDoor:
    def __init__(self, store: Store, takes: Takes, admit: Admit) -> None:
        self.store = store
        self.takes = takes
        self.admit = admit

    async def enqueue(self, request: web.Request) -> web.Response:
        params: dict[str, str] = {}
        for name in PARAMS:
            value = request.query.get(name, "")
            if not value or len(value) > MAX_PARAM_LEN or "\x00" in value:
                return text_error(422, f"{name} is required: 1 to {MAX_PARAM_LEN} characters")
            params[name] = value
        try:
            spec = JobSpec(pool=request.match_info["pool"], payload={"servo": params})
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
        wait_s = wait_or_why(request, MAX_WAIT_S)
        if isinstance(wait_s, str):  # as text, like every Servo error
            return text_error(422, wait_s)
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
