"""What every route of the API answers with: JSON bodies, and errors in one shape,
`{"error": {"code", "message", "field"}}`, whatever raised them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator.errors import InvalidInput, OrchestratorError
from schemas.events import error_from_validation

# Admission outcomes and error codes -> HTTP status.
STATUS = {
    "admitted": 201,
    "existing": 200,
    "malformed": 400,
    "invalid": 422,
    "unsatisfiable": 422,
    "conflict": 409,
    "overloaded": 429,
    "unavailable": 503,
    "internal": 500,
}


def error_response(status: int, code: str, message: str, field: str | None = None, **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers or None)


def invalid_response(exc: ValidationError) -> web.Response:
    """A body the model refused: 400 when it is not JSON at all, else 422; both name the field."""
    error = error_from_validation(exc)
    return error_response(STATUS[error.code], error.code, error.message, error.field)


def json_response(model: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    text = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model, default=str)
    return web.Response(text=text, status=status, content_type="application/json")


def query_limit(request: web.Request) -> int | web.Response:
    """`?limit=` (default 100, 1..1000), or the 422 that says what is wrong with it."""
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return error_response(422, "invalid", "limit must be an integer", "limit")
    if not 1 <= limit <= 1000:
        return error_response(422, "invalid", "limit must be between 1 and 1000", "limit")
    return limit


def wait_or_why(request: web.Request, most: float) -> float | str:
    """`?wait=` seconds of long poll (default 0, at most `most`), or what is wrong with it."""
    raw = request.query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        return f"wait must be a number of seconds, not {raw!r}"
    if not 0 <= wait <= most:  # also refuses nan
        return f"wait must be between 0 and {most:g} seconds"
    return wait


def query_wait(request: web.Request, most: float) -> float | web.Response:
    """`?wait=`, or the 422 that says what is wrong with it."""
    wait = wait_or_why(request, most)
    return error_response(422, "invalid", wait, "wait") if isinstance(wait, str) else wait


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405, 413 body too large) in the API's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        # The 413's text names the limit ("Maximum request body size N exceeded."); the others'
        # text is just "<status>: <reason>".
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        return error_response(exc.status, code, message)
    except InvalidInput as exc:  # a value the schemas let through and Postgres refused
        return error_response(422, exc.code, str(exc))
    except OrchestratorError as exc:
        return error_response(503, exc.code, str(exc))
