"""Pool endpoints: list, read, create or replace (`PUT`), change given fields (`PATCH`), delete. A
change goes through `orchestrator.pools.change_pool`, the one way a pool changes; a deletion
through `orchestrator.pools.delete_pool` (only while nothing uses the pool).

A provisioner's name is resolved here as the provisioner service resolves it (the runtime's names,
entry points, import paths): one that resolves to nothing is refused, naming `provisioner`. Stored,
it would stop the provisioner's next start (it refuses to start on a pool naming one, as on a typo
in the pools file), and with it `up`, whose API could then no longer undo it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError, NotFound
from orchestrator.pools import PoolChange, PoolInUse, change_pool, delete_pool
from orchestrator.provisioning import ProvisionerFactory, resolve
from orchestrator.store import Store
from schemas.api import PoolChanged, PoolDeleted
from schemas.events import error_from_validation
from schemas.pools import PoolConfig, PoolView
from services.api.params import POOL_NAME
from services.api.responses import error_response, invalid_response, json_response

_pool_fields = TypeAdapter(dict[str, Any])


class PoolViews:
    def __init__(self, store: Store, bus: Bus, provisioners: Mapping[str, ProvisionerFactory]) -> None:
        self.store = store
        self.bus = bus
        self.provisioners = provisioners

    async def list_pools(self, request: web.Request) -> web.Response:
        pools = [PoolView.from_row(row).model_dump(mode="json") for row in await self.store.pool_list()]
        return json_response({"pools": pools})

    async def get_pool(self, request: web.Request) -> web.Response:
        row = await self.store.pool_get(request.match_info["name"])
        if row is None:
            return error_response(404, "not_found", f"no pool {request.match_info['name']!r}", "name")
        return json_response(PoolView.from_row(row))

    async def put_pool(self, request: web.Request) -> web.Response:
        """Create or replace: what the body omits takes its default."""
        name, body = await self._pool_request(request)
        if isinstance(body, web.Response):
            return body
        try:
            config = PoolConfig.model_validate(body)
            if refused := self._unknown_provisioner(config.provisioner):
                return refused
            change = await change_pool(self.store, self.bus, name, config=config)
        except ValidationError as exc:  # the body's, or a shard past the number of shards
            return invalid_response(exc)
        return self._pool_changed(change, 201 if change.created else 200)

    async def patch_pool(self, request: web.Request) -> web.Response:
        """Change only the fields the body gives."""
        name, body = await self._pool_request(request)
        if isinstance(body, web.Response):
            return body
        if isinstance(given := body.get("provisioner"), str) and (refused := self._unknown_provisioner(given)):
            return refused  # a name of the wrong form is the model's to refuse, below
        try:
            change = await change_pool(self.store, self.bus, name, patch=body)
        except ValidationError as exc:
            return invalid_response(exc)
        except NotFound as exc:
            return error_response(404, "not_found", str(exc), "name")
        return self._pool_changed(change, 200)

    async def delete_pool(self, request: web.Request) -> web.Response:
        """200 with the deleted pool; 404 unknown; 409 while it has live jobs or live runners."""
        name = request.match_info["name"]
        try:
            deleted = await delete_pool(self.store, name)
        except NotFound as exc:
            return error_response(404, "not_found", str(exc), "name")
        except PoolInUse as exc:
            return error_response(409, exc.code, str(exc), "name")
        return json_response(PoolDeleted.model_validate({n: deleted[n] for n in PoolDeleted.model_fields}))

    async def _pool_request(self, request: web.Request) -> tuple[str, dict[str, Any] | web.Response]:
        name = POOL_NAME.parse(request)
        try:
            # pydantic's parser, as for every other body: json.loads recurses, and a deeply nested
            # body would end in a RecursionError (a 500) instead of a 400. (A missing body is
            # refused before this, as for every route with one: routes.py.)
            return name, _pool_fields.validate_json(await request.read())
        except ValidationError as exc:
            if error_from_validation(exc).code == "malformed":
                return name, invalid_response(exc)
            return name, error_response(422, "invalid", "the body must be a JSON object of pool fields")

    def _unknown_provisioner(self, name: str | None) -> web.Response | None:
        """422 naming `provisioner` when `name` resolves to no provisioner factory; None when it does."""
        if name is None:
            return None
        try:
            resolve(name, self.provisioners)
        except ConfigurationError as exc:
            return error_response(422, "invalid", str(exc), "provisioner")
        return None

    @staticmethod
    def _pool_changed(change: PoolChange, status: int) -> web.Response:
        view = PoolView.from_row(change.pool).model_dump()
        return json_response(PoolChanged(**view, failed_jobs=change.failed_jobs), status)
