"""Bearer-token auth with roles: producer, runner, operator.

Off while no token is configured (the embedded stack's default); on as soon as any of
`ORCH_PRODUCER_TOKENS`, `ORCH_RUNNER_TOKENS`, `ORCH_OPERATOR_TOKENS` (comma-separated) is set.
Each route says which roles may call it (`routes.py`); the operator may call every route. Only
the tokens' hashes are kept, and a presented token is compared with every one of them in
constant time, so the answer's timing tells nothing about which (if any) it matched.
Missing token: 401; a wrong one, or a role the route does not allow: 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from orchestrator.tokens import token_hash
from services.api.responses import error_response

# The request's keys for the caller's role (set only when auth is on and a token was given),
# and for the tenant its token is bound to (a tenant's producer token only: tenancy.py).
ROLE = web.RequestKey("role", str)
TENANT = web.RequestKey("tenant", str)


class Auth:
    def __init__(self, tokens: Iterable[tuple[str, str]], tenants: Iterable[tuple[str, str]] = ()) -> None:
        """`tokens`: (role, token) pairs, as `HttpSettings.api_tokens` lists them; `tenants`:
        (tenant, token) for the producer tokens bound to a tenant (`tenant_bound_tokens`)."""
        bound = {token_hash(token): tenant for tenant, token in tenants}
        self._tokens: list[tuple[bytes, str, str | None]] = [
            (h, role, bound.get(h)) for role, token in tokens if token for h in [token_hash(token)]
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, token: str) -> tuple[str, str | None] | None:
        """The role of `token`, and the tenant it is bound to; None when it is no token of ours."""
        presented = token_hash(token)
        found = None
        for stored, role, tenant in self._tokens:  # no early exit: every comparison is made
            if hmac.compare_digest(presented, stored):
                found = (role, tenant)
        return found

    def middleware(self, roles: Mapping[tuple[str, str], frozenset[str]]) -> Any:
        @web.middleware
        async def authorize(request: web.Request, handler: Any) -> web.StreamResponse:
            info = request.match_info.route
            allowed = roles.get((request.method, info.resource.canonical if info.resource else ""))
            if not self.enabled or not allowed:  # auth off, a public route, or no route (404/405)
                return await handler(request)
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return error_response(
                    401,
                    "unauthorized",
                    "a bearer token is required (Authorization: Bearer <token>)",
                    **{"WWW-Authenticate": "Bearer"},
                )
            found = self.identify(token.strip())
            if found is None:
                return error_response(403, "forbidden", "the bearer token is not valid")
            role, tenant = found
            if role != "operator" and role not in allowed:
                who = sorted(allowed | {"operator"})
                message = f"role {role!r} may not {request.method} {info.resource.canonical}: allowed {who}"
                return error_response(403, "forbidden", message)
            request[ROLE] = role  # for a handler whose rule depends on who asks
            if tenant is not None:
                request[TENANT] = tenant
            return await handler(request)

        return authorize
