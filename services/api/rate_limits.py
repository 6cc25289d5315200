"""Rate-limit endpoints: `PUT /v1/rate-limits/{key}` sets one (creates or changes it, keeping the
starts already made: see `queries/flow.sql`), `GET` reads it with where it stands now (`GET
/v1/rate-limits` all of them), `DELETE` lifts it. A job names its rate limit with
`rate_limit_key`; admission refuses a key nobody set (422 naming it), so one deleted too.

A job already admitted whose key is deleted starts without a limit: the claim reads a missing key
as no limit (migration 0016). Its pool's dispatcher may have set its timer for the start the old
limit allowed next (an hour away, for one start an hour), so a change or a deletion wakes the
pools where the key's jobs wait, after its commit (`announce_rate_limit_changed`)."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.store import RateLimit, Store
from orchestrator.wakes import announce_rate_limit_changed
from schemas.jobs import RateLimitKey
from schemas.rate_limits import RateLimitConfig, RateLimitDeleted, RateLimitList, RateLimitView
from services.api.params import BadParam, Param
from services.api.responses import error_response, invalid_response, json_response
from services.api.routes import ANY_ROLE, OPERATOR, Link, Route

RATE_LIMIT_KEY = Param(
    "key",
    "the rate limit's key (a job's rate_limit_key)",
    RateLimitKey,
    required=True,
    where="path",
    hint="is not a rate-limit key: letters, digits, '_', '.', ':' or '-' (at most 128), starting alphanumeric",
)


def _view(limit: RateLimit) -> RateLimitView:
    return RateLimitView(
        key=limit.key,
        limit=limit.max_starts,
        period_s=limit.period_s,
        burst=limit.burst,
        starts_left=limit.starts_left,
        next_start_at=limit.next_start_at,
        created_at=limit.created_at,
        updated_at=limit.updated_at,
    )


class RateLimitViews:
    def __init__(self, store: Store, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    def routes(self) -> list[Route]:
        by_key = {"key": "$response.body#/key"}  # a limit set leads to reading and deleting it
        links = (Link(self.get_rate_limit.__name__, by_key), Link(self.delete_rate_limit.__name__, by_key))
        return [
            Route("GET", "/v1/rate-limits", self.list_rate_limits, ANY_ROLE, "List rate limits, by key", None,
                  {200: RateLimitList}),
            Route("PUT", "/v1/rate-limits/{key}", self.put_rate_limit, OPERATOR,
                  "Create or change a rate limit: at most `limit` starts per `period_s`", RateLimitConfig,
                  {200: RateLimitView, 201: RateLimitView}, (422,), (RATE_LIMIT_KEY,), links=links),
            Route("GET", "/v1/rate-limits/{key}", self.get_rate_limit, ANY_ROLE, "A rate limit, and its next start",
                  None, {200: RateLimitView}, (404,), (RATE_LIMIT_KEY,)),
            Route("DELETE", "/v1/rate-limits/{key}", self.delete_rate_limit, OPERATOR,
                  "Delete a rate limit: jobs already admitted that name it start without it from then on; "
                  "new jobs naming it are refused (422) until it is set again", None, {200: RateLimitDeleted},
                  (404,), (RATE_LIMIT_KEY,)),
        ]  # fmt: skip

    async def list_rate_limits(self, request: web.Request) -> web.Response:
        return json_response(RateLimitList(rate_limits=[_view(limit) for limit in await self.store.rate_limit_list()]))

    async def put_rate_limit(self, request: web.Request) -> web.Response:
        key = RATE_LIMIT_KEY.parse(request)
        try:
            config = RateLimitConfig.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_response(exc)
        limit = await self.store.rate_limit_put(key, config.limit, config.period_s, config.burst)
        if not limit.created:  # a changed limit may allow its waiting jobs' next start sooner
            await announce_rate_limit_changed(self.store, self.bus, key)
        return json_response(_view(limit), 201 if limit.created else 200)

    async def get_rate_limit(self, request: web.Request) -> web.Response:
        key = _key_or_404(request)
        if isinstance(key, web.Response):
            return key
        limit = await self.store.rate_limit_get(key)
        if limit is None:
            return _not_found(key)
        return json_response(_view(limit))

    async def delete_rate_limit(self, request: web.Request) -> web.Response:
        key = _key_or_404(request)
        if isinstance(key, web.Response):
            return key
        limit = await self.store.rate_limit_delete(key)
        if limit is None:
            return _not_found(key)
        await announce_rate_limit_changed(self.store, self.bus, key)  # its jobs may start now
        return json_response(RateLimitDeleted(key=key, deleted=True, rate_limit=_view(limit)))


def _key_or_404(request: web.Request) -> str | web.Response:
    """404 for a key of the wrong shape too, as for one never set (as ids are answered: a read or
    a delete names what it looked for, it does not validate it)."""
    try:
        return RATE_LIMIT_KEY.parse(request)
    except BadParam as exc:
        return error_response(404, "not_found", f"no rate limit: {exc}", "key")


def _not_found(key: str) -> web.Response:
    return error_response(404, "not_found", f"no rate limit {key!r}", "key")
