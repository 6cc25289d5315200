"""Runner endpoints: list, drain, replace taints."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.store import Store
from orchestrator.store.rows import Runner
from schemas.api import RunnerList, RunnerView
from schemas.events import RunnerTaintsChanged
from schemas.runners import RunnerTaints
from services.api import params
from services.api.responses import error_response, invalid_response, json_response


def _runner_id(row: Runner) -> str:
    return row.id


class RunnerViews:
    def __init__(self, store: Store, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    async def list_runners(self, request: web.Request) -> web.Response:
        """A page of runners in id order (`limit`, and `after`: the previous page's `next`)."""
        after, limit = params.RUNNERS_AFTER.parse(request), params.LIMIT.parse(request)
        rows, next_after = params.page(await self.store.runner_list(after=after, limit=limit + 1), limit, _runner_id)
        return json_response(RunnerList(runners=[RunnerView.from_row(r) for r in rows], next=next_after))

    async def drain_runner(self, request: web.Request) -> web.Response:
        runner_id = request.match_info["id"]
        row = await self.store.runner_drain(runner_id)
        if row is not None:
            return json_response(RunnerView.from_row(row))
        if await self.store.runner_get(runner_id) is None:
            return error_response(404, "not_found", f"no runner {runner_id!r}", "id")
        return error_response(409, "lost", f"runner {runner_id!r} is lost: there is nothing to drain", "id")

    async def set_runner_taints(self, request: web.Request) -> web.Response:
        """Set a runner's taints; capacity re-elects its pool's leader when it hears of it."""
        try:
            body = RunnerTaints.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_response(exc)
        runner_id = request.match_info["id"]
        row = await self.store.runner_set_taints(runner_id, body.taints)
        if row is None:
            return error_response(404, "not_found", f"no runner {runner_id!r}", "id")
        await self.bus.publish(
            self.bus.subjects.runner_taints_changed,
            RunnerTaintsChanged(runner_id=row.id, pool=row.pool, taints=row.taints),
        )
        return json_response(RunnerView.from_row(row))
