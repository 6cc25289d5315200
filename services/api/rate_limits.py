"""Rate-limit endpoints: `PUT /v1/rate-limits/{key}` sets one (creates or changes it, keeping the
starts already made: see `queries/flow.sql`), `GET` reads it with where it stands now. A job
names its rate limit with `rate_limit_key`; admission refuses a key nobody set (422 naming it)."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.store import RateLimit, Store
from schemas.jobs import RateLimitKey
from schemas.rate_limits import RateLimitConfig, RateLimitView
from services.api.params import BadParam, Param
from services.api.responses import error_response, invalid_response, json_response
from services.api.routes import ANY_ROLE, OPERATOR, Route

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
    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[Route]:
        return [
            Route("PUT", "/v1/rate-limits/{key}", self.put_rate_limit, OPERATOR,
                  "Create or change a rate limit: at most `limit` starts per `period_s`", RateLimitConfig,
                  {200: RateLimitView, 201: RateLimitView}, (422,), (RATE_LIMIT_KEY,)),
            Route("GET", "/v1/rate-limits/{key}", self.get_rate_limit, ANY_ROLE, "A rate limit, and its next start",
                  None, {200: RateLimitView}, (404,), (RATE_LIMIT_KEY,)),
        ]  # fmt: skip

    async def put_rate_limit(self, request: web.Request) -> web.Response:
        key = RATE_LIMIT_KEY.parse(request)
        try:
            config = RateLimitConfig.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_response(exc)
        limit = await self.store.rate_limit_put(key, config.limit, config.period_s, config.burst)
        return json_response(_view(limit), 201 if limit.created else 200)

    async def get_rate_limit(self, request: web.Request) -> web.Response:
        """404 for a key of the wrong shape too, as for one never set (as ids are answered: a read
        names what it looked for, it does not validate it)."""
        try:
            key = RATE_LIMIT_KEY.parse(request)
        except BadParam as exc:
            return error_response(404, "not_found", f"no rate limit: {exc}", "key")
        limit = await self.store.rate_limit_get(key)
        if limit is None:
            return error_response(404, "not_found", f"no rate limit {key!r}", "key")
        return json_response(_view(limit))
