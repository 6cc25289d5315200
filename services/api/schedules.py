"""Schedule endpoints: create or replace (`PUT`), read, list, delete. The scheduler (the dispatch
leader's, services/admission/scheduler.py) fires them; this module only keeps their rows, and
wakes it (`SchedulesChanged`) after each change so its timer is set for the new times.

A schedule is validated as a job is at the door, and more: its cron must parse and fire at all,
its time zone must exist, and its job must be able to run in its pool now (the pool's
`unrunnable` rule, the one admission applies), each a 422 naming the field. A PUT that changes the
cron or the time zone, and one that unpauses, restarts the schedule from now: fire times before
it never fire. Any other change keeps its position (a catch-up still due stays due).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.cron import BadCron, Cron
from orchestrator.store import Store
from orchestrator.store.schedules import Position
from schemas.events import SchedulesChanged
from schemas.pools import PoolConfig
from schemas.schedules import ScheduleDeleted, ScheduleList, ScheduleSpec, ScheduleView
from services.api import tenancy
from services.api.params import SCHEDULE_NAME
from services.api.responses import error_response, invalid_response, json_response


class ScheduleViews:
    def __init__(self, store: Store, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    async def put_schedule(self, request: web.Request) -> web.Response:
        name = SCHEDULE_NAME.parse(request)
        try:
            spec = ScheduleSpec.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_response(exc)
        try:
            cron = Cron.parse(spec.cron, spec.timezone)
        except BadCron as exc:
            return error_response(422, "invalid", str(exc), exc.field)
        job = tenancy.owned(request, spec.job, "job.tenant")  # a tenant's token schedules its own jobs
        if isinstance(job, web.Response):
            return job
        spec = spec.model_copy(update={"job": job})
        current = await self.store.schedule_get(name)
        if current is not None and not tenancy.visible(request, current["job"].get("tenant")):
            return error_response(403, "forbidden", f"schedule {name!r} is another tenant's", "name")
        refused = await self._unrunnable(spec)
        if refused is not None:
            return refused

        def position(current: dict[str, Any] | None) -> Position:
            now = datetime.now(UTC)
            restart = (
                current is None
                or (current["cron"], current["timezone"]) != (spec.cron, spec.timezone)
                or (current["paused"] and not spec.paused)
            )
            through = now if restart or current is None else current["handled_through"]
            return Position(through, cron.next_after(through))

        fields = {
            "cron": spec.cron,
            "timezone": spec.timezone,
            "job": spec.job.model_dump(mode="json", exclude_unset=True),
            "pool": spec.job.pool,
            "overlap": spec.overlap,
            "catch_up": spec.catch_up,
            "paused": spec.paused,
        }
        created = await self.store.schedule_put(name, fields, position)
        await self._changed(name)
        row = await self.store.schedule_get(name)
        assert row is not None
        return json_response(ScheduleView.from_row(row), 201 if created else 200)

    async def _unrunnable(self, spec: ScheduleSpec) -> web.Response | None:
        """Its job judged as admission judges one (the pool's own rule), now: a schedule whose
        every fire would be refused is refused itself."""
        job = spec.job
        row = await self.store.pool_get(job.pool)
        if row is None:
            return error_response(422, "unsatisfiable", f"pool {job.pool!r} does not exist", "job.pool")
        why = PoolConfig.from_row(row).unrunnable(job.pool, job.labels, job.plan)
        if why is None:
            return None
        field, message = why
        return error_response(422, "unsatisfiable", message, f"job.{field}")

    async def get_schedule(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        row = await self.store.schedule_get(name)
        if row is None or not tenancy.visible(request, row["job"].get("tenant")):
            return error_response(404, "not_found", f"no schedule {name!r}", "name")
        return json_response(ScheduleView.from_row(row))

    async def list_schedules(self, request: web.Request) -> web.Response:
        rows = [r for r in await self.store.schedule_list() if tenancy.visible(request, r["job"].get("tenant"))]
        return json_response(ScheduleList(schedules=[ScheduleView.from_row(r) for r in rows]))

    async def delete_schedule(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        row = await self.store.schedule_get(name)
        hidden = row is not None and not tenancy.visible(request, row["job"].get("tenant"))
        if hidden or not await self.store.schedule_delete(name):
            return error_response(404, "not_found", f"no schedule {name!r}", "name")
        await self._changed(name)
        return json_response(ScheduleDeleted(name=name, deleted=True))

    async def _changed(self, name: str) -> None:
        await self.bus.publish(self.bus.subjects.schedules_changed, SchedulesChanged(name=name))
