"""The route table: one row per endpoint, read three ways.

aiohttp registers the handlers from it, the auth middleware reads who may call each route from
it, and `/openapi.json` is generated from it with the JSON Schema of the very pydantic models
that validate the bodies and render the answers, and of the types that validate the parameters
(`params.py`). So the document cannot drift from the server, and it is exact: what it calls
valid is accepted, what it calls invalid is refused. What the framework answers for every route
of a kind is added here, not by each row: a route with a body refuses a request without one
(400) and one too large (413); with auth on, a route with roles answers 401 and 403, and the
document declares the bearer scheme; with auth off it declares none, as none is asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.api import ErrorBody
from services.api.params import Param
from services.api.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Who may call a route when auth is on. The operator may call every route.
PUBLIC: frozenset[str] = frozenset()  # no bearer token: open, or its own credential (a take token)
PRODUCER = frozenset({"producer"})
RUNNER = frozenset({"runner"})
ANY_ROLE = frozenset({"producer", "runner", "operator"})
OPERATOR = frozenset({"operator"})
ROLES = ("producer", "runner", "operator")

_ERRORS = {
    400: "malformed JSON, or no body",
    401: "auth is on and no bearer token was given",
    403: "the token is wrong, or its role may not do this",
    404: "not found",
    409: "conflict",
    413: "body too large",
    422: "invalid: names the field",
    429: "overloaded: retry after `Retry-After` seconds",
    503: "unavailable: retry after `Retry-After` seconds",
}
# Answers that tell the client when to come back.
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
}


@dataclass(frozen=True)
class Media:
    """An answer that is not a JSON model: its media types and what it holds."""

    description: str
    types: tuple[str, ...] = ("text/plain",)
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Link:
    """Where an answer's values lead: the operation (its handler's name) and the parameters it
    takes from the answer (`$response.body#/id`), so clients and the fuzzer can follow a job."""

    operation: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[str]
    summary: str
    body: type[BaseModel] | None = None
    # status -> the answer: a JSON model, another media type, or None (no body)
    answers: dict[int, type[BaseModel] | Media | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    text_errors: bool = False  # errors as text/plain, not ErrorBody (Servo's wire format)
    # Statuses whose answer carries `Retry-After`.
    retry_after: tuple[int, ...] = ()
    links: tuple[Link, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    def statuses(self, *, auth: bool) -> tuple[int, ...]:
        """Every error status the route can answer: its own, and those of its kind."""
        framework = (400, 413) if self.body is not None else ()
        guarded = (401, 403) if auth and self.roles else ()
        return tuple(sorted({*self.errors, *framework, *guarded}))


def register(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler if route.body is None else _needs_body(route))


def _needs_body(route: Route) -> Handler:
    """A route that takes a body refuses a request without one, before its handler: an empty PUT
    must not replace a pool with every default."""
    assert route.body is not None
    wanted = route.body.__name__

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.read()).strip():
            message = f"{route.method} {route.path} needs a JSON body (a {wanted} object; see /openapi.json)"
            return error_response(400, "malformed", message)
        return await route.handler(request)

    return handler


def openapi(routes: Sequence[Route], *, title: str, version: str, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; `auth`: whether bearer tokens are asked for."""
    models = {ErrorBody}
    for route in routes:
        models.update(m for m in (route.body, *route.answers.values()) if isinstance(m, type))
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema([(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__}
        declared = {p.name: p for p in route.params if p.where == "path"}
        params = [
            declared[name].openapi()
            if name in declared
            else {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in (segment[1:-1] for segment in route.path.split("/") if segment.startswith("{"))
        ]
        params += [p.openapi() for p in route.params if p.where == "query"]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": ref(route.body)}
        responses: dict[str, Any] = {}
        for status, answer in route.answers.items():
            if isinstance(answer, Media):
                content = {media: {"schema": answer.schema} for media in answer.types}
                responses[str(status)] = {"description": answer.description, "content": content}
            else:
                responses[str(status)] = {"description": "ok" if status < 300 else "see the body"}
                if answer is not None:
                    responses[str(status)]["content"] = ref(answer)
        for status in route.statuses(auth=auth):
            # The route's own errors may be text (Servo's); the auth middleware's are JSON everywhere.
            text = route.text_errors and status in route.errors
            content = {"text/plain": {"schema": {"type": "string"}}} if text else ref(ErrorBody)
            responses[str(status)] = {"description": _ERRORS[status], "content": content}
        for status in route.answers:
            if route.links and status < 300:
                responses[str(status)]["links"] = {
                    link.operation: {"operationId": link.operation, "parameters": link.parameters}
                    for link in route.links
                }
        for status in route.retry_after:
            responses[str(status)]["headers"] = _RETRY_AFTER
        op["responses"] = responses
        if route.roles:
            op["x-roles"] = sorted(route.roles | {"operator"})
            if auth:
                op["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    components: dict[str, Any] = {"schemas": schema.get("$defs", {})}
    if auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths, "components": components}
