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

# The request's key for the caller's role (set only when auth is on and a token was given).
ROLE = web.RequestKey("role", str)


class Auth:
    def __init__(self, tokens: Iterable[tuple[str, str]]) -> None:
        """`tokens`: (role, token) pairs, as `HttpSettings.api_tokens` lists them."""
        self._tokens: list[tuple[bytes, str]] = [(token_hash(token), role) for role, token in tokens if token]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def role_of(self, token: str) -> str | None:
        presented = token_hash(token)
        role = None
        for stored, stored_role in self._tokens:  # no early exit: every comparison is made
            if hmac.compare_digest(presented, stored):
                role = stored_role
        return role

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
            role = self.role_of(token.strip())
            if role is None:
                return error_response(403, "forbidden", "the bearer token is not valid")
            if role != "operator" and role not in allowed:
                who = sorted(allowed | {"operator"})
                message = f"role {role!r} may not {request.method} {info.resource.canonical}: allowed {who}"
                return error_response(403, "forbidden", message)
            request[ROLE] = role  # for a handler whose rule depends on who asks
            return await handler(request)

        return authorize
