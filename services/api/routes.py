"""The route table: one row per endpoint, read three ways.

aiohttp registers the handlers from it, the auth middleware reads who may call each route from
it, and `/openapi.json` is generated from it with the JSON Schema of the very pydantic models
that validate the bodies and render the answers. So the document cannot drift from the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.api import ErrorBody

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Who may call a route when auth is on. The operator may call every route.
PUBLIC: frozenset[str] = frozenset()  # no bearer token: open, or its own credential (a take token)
PRODUCER = frozenset({"producer"})
RUNNER = frozenset({"runner"})
ANY_ROLE = frozenset({"producer", "runner", "operator"})
OPERATOR = frozenset({"operator"})
ROLES = ("producer", "runner", "operator")

_ERRORS = {
    400: "malformed JSON",
    401: "auth is on and no bearer token was given",
    403: "the token is wrong, or its role may not do this",
    404: "not found",
    409: "conflict",
    413: "body too large",
    422: "invalid: names the field",
    429: "overloaded: retry after `Retry-After` seconds",
    503: "unavailable: retry after `Retry-After` seconds",
}


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    required: bool = False
    type: str = "string"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[str]
    summary: str
    body: type[BaseModel] | None = None
    # status -> the answer's model (None: no JSON body, or described by `text`)
    answers: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    query: tuple[Query, ...] = ()
    text: str | None = None  # a text/plain 200 body (Servo's enqueue)
    text_errors: bool = False  # errors as text/plain, not ErrorBody (Servo's wire format)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


def register(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)


def openapi(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    models = {ErrorBody}
    for route in routes:
        models.update(m for m in (route.body, *route.answers.values()) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema([(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__}
        params = [
            {"name": name[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.path.split("/")
            if name.startswith("{")
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": {"type": q.type},
            }
            for q in route.query
        ]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": ref(route.body)}
        responses: dict[str, Any] = {}
        for status, model in route.answers.items():
            responses[str(status)] = {"description": "ok" if status < 300 else "see the body"}
            if model is not None:
                responses[str(status)]["content"] = ref(model)
            elif route.text is not None:
                responses[str(status)] = {
                    "description": route.text,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
        for status in route.errors:
            responses[str(status)] = {"description": _ERRORS[status], "content": ref(ErrorBody)}
            if route.text_errors:
                responses[str(status)]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        op["responses"] = responses
        op["security"] = [] if not route.roles else [{"bearer": []}]
        if route.roles:
            op["x-roles"] = sorted(route.roles | {"operator"})
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
