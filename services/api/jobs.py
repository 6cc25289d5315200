"""Job endpoints: submit (the HTTP door: validated with the model every door uses, then decided
by the admission service over the bus), read, list, follow the output of, cancel, take and
finish a job. A tenant's token sees only its tenant's jobs (`tenancy.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from aiohttp import web
from opentelemetry import trace
from pydantic import ValidationError

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.store import Store
from orchestrator.tokens import token_matches
from orchestrator.wakes import announce_ended
from schemas.api import FinishBody, JobDetail, JobList, JobListed, RunnerView, Taken
from schemas.events import AdmissionResult
from schemas.jobs import JobSpec, JobState, JobView
from services.api import params, tenancy
from services.api.auth import ROLE
from services.api.blocked import Why
from services.api.logs import JobLogsView
from services.api.responses import STATUS, error_response, invalid_response, json_response
from services.api.take import RETRY_AFTER_S, Takes

_tracer = telemetry.tracer("orchestrator.api")


class JobViews:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        why: Why,
        logs: JobLogsView,
        takes: Takes,
        admit: Callable[[JobSpec], Awaitable[AdmissionResult]],
    ) -> None:
        self.store = store
        self.bus = bus
        self.why = why
        self.logs = logs
        self.takes = takes
        self.admit = admit

    async def submit(self, request: web.Request) -> web.Response:
        ctx = telemetry.extract(request.headers)
        with _tracer.start_as_current_span("POST /v1/jobs", context=ctx, kind=trace.SpanKind.SERVER):
            raw = await request.read()
            try:
                spec = tenancy.owned(request, JobSpec.model_validate_json(raw))
            except ValidationError as exc:
                return invalid_response(exc)
            if isinstance(spec, web.Response):
                return spec
            return self._admission_response(await self.admit(spec))

    @staticmethod
    def _admission_response(result: AdmissionResult) -> web.Response:
        if result.error is not None:
            headers = {}
            if result.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, round(result.retry_after_s)))
            return error_response(
                STATUS.get(result.error.code, 422),
                result.error.code,
                result.error.message,
                result.error.field,
                **headers,
            )
        assert result.job is not None
        body = {**result.job.model_dump(mode="json"), "token": result.token}
        return json_response(body, STATUS[result.outcome])

    async def _job_or_404(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            job_id = UUID(request.match_info["id"])
        except ValueError:
            return error_response(404, "not_found", f"no job {request.match_info['id']!r}: not a job id", "id")
        row = await self.store.job_get(job_id)
        if row is None or not tenancy.visible(request, row["tenant"]):  # another tenant's: as if none
            return error_response(404, "not_found", f"no job {job_id}", "id")
        return row

    async def get_job(self, request: web.Request) -> web.Response:
        row = await self._job_or_404(request)
        if isinstance(row, web.Response):
            return row
        blocked = await self.why.blocked_by(row) if row["state"] == JobState.queued else None
        return json_response(JobDetail.of(row, blocked))

    async def get_job_logs(self, request: web.Request) -> web.StreamResponse:
        row = await self._job_or_404(request)
        if isinstance(row, web.Response):
            return row
        return await self.logs.handle(request, row)

    async def list_jobs(self, request: web.Request) -> web.Response:
        pool, state, key = (p.parse(request) for p in (params.POOL, params.STATE, params.KEY))
        limit = params.LIMIT.parse(request)
        rows = await self.store.job_list(
            pool=pool, state=state, key=key, limit=limit, tenant=tenancy.bound_tenant(request)
        )
        waiting = await self.why.waiting(rows)
        jobs = [JobListed(**JobView.from_row(r).model_dump(), blocked_by=waiting.get(r["id"])) for r in rows]
        return json_response(JobList(jobs=jobs))

    async def cancel_job(self, request: web.Request) -> web.Response:
        row = await self._job_or_404(request)
        if isinstance(row, web.Response):
            return row
        cancel = await self.store.transitions.cancel(row["id"])
        if cancel.outcome == "final":
            return error_response(409, "final", f"job {row['id']} already ended: {cancel.job.state}", "id")
        # Queued or assigned: ended now (an assigned one's slot is free at once). Running:
        # recorded, its runner told; it ends when the runner reports (or is lost).
        if cancel.outcome == "cancelled" and cancel.job.runner_id is not None:
            await announce_ended(self.store, self.bus, [cancel.job])
        return json_response(JobView.from_row(cancel.job), 200 if cancel.outcome == "cancelled" else 202)

    async def take_job(self, request: web.Request) -> web.Response:
        """`POST /v1/jobs/{id}/take?token=T[&wait=S]`: the runner holding the job, once one does."""
        wait_s = params.WAIT.parse(request)
        row = await self._job_or_404(request)
        if isinstance(row, web.Response):
            return row
        if not token_matches(request.query.get("token"), row["token_hash"]):
            return error_response(403, "forbidden", f"wrong or missing token for job {row['id']}", "token")
        result = await self.takes.take(row["id"], wait_s)
        if result.status == 200:
            assert result.job is not None and result.runner is not None
            return json_response(Taken(job=JobView.from_row(result.job), runner=RunnerView.from_row(result.runner)))
        if result.status == 503:
            return error_response(503, "not_ready", result.message, None, **{"Retry-After": str(RETRY_AFTER_S)})
        return error_response(result.status, "not_found", result.message, "id")

    async def finish_job(self, request: web.Request) -> web.Response:
        """End a reservation its runner holds, as its client says (exit code or outcome). Only a
        reservation (a job with a command ends when the command does), and only its client (the
        take token) or an operator: anyone else could free a slot someone is using."""
        try:
            body = FinishBody.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_response(exc)
        row = await self._job_or_404(request)
        if isinstance(row, web.Response):
            return row
        if request.get(ROLE) != "operator" and not token_matches(request.query.get("token"), row["token_hash"]):
            message = f"finishing job {row['id']} needs its take token (?token=) or the operator role"
            return error_response(403, "forbidden", message, "token")
        if "command" in row["payload"]:
            message = f"job {row['id']} runs a command: it ends when the command does (DELETE cancels it)"
            return error_response(409, "not_reservation", message, "id")
        ended = await self.store.transitions.finish_held(
            row["id"], body.state(), body.exit_code, "finished by its client"
        )
        if ended is None:
            message = f"job {row['id']} is {row['state']}: only a job a runner holds can be finished (DELETE cancels)"
            return error_response(409, "not_held", message, "id")
        # The slot is free now, not when the runner's late report comes back.
        await announce_ended(self.store, self.bus, [ended])
        return json_response(JobView.from_row(ended))
