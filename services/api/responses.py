"""What every route of the API answers with: JSON bodies, and errors in one shape,
`{"error": {"code", "message", "field"}}`, whatever raised them."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from orchestrator.errors import InvalidInput, OrchestratorError
from schemas.events import error_from_validation
from services.api.params import BadParam

# Admission outcomes and error codes -> HTTP status.
STATUS = {
    "admitted": 201,
    "existing": 200,
    "malformed": 400,
    "invalid": 422,
    "unsatisfiable": 422,
    "conflict": 409,
    "concurrency_limit": 409,
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
    """Every JSON answer, written by pydantic's serializer: a model's own, and for a plain dict the
    same rules (datetimes in ISO 8601, UTC as `Z`, like every model's), so no answer writes a
    timestamp its own way."""
    body = model.model_dump_json() if isinstance(model, BaseModel) else to_json(model).decode()
    return web.Response(text=body, status=status, content_type="application/json")


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405, 413 body too large) and refused parameters in the
    API's error shape."""
    try:
        return await handler(request)
    except BadParam as exc:
        return error_response(422, "invalid", str(exc), exc.name)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        # The 413's text names the limit ("Maximum request body size N exceeded."); the others'
        # text is just "<status>: <reason>".
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        # A 405 says which methods the route has (`Allow`, RFC 9110); a 401's `WWW-Authenticate`.
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return error_response(exc.status, code, message, **kept)
    except InvalidInput as exc:  # a value the schemas let through and Postgres refused
        return error_response(422, exc.code, str(exc))
    except OrchestratorError as exc:
        return error_response(503, exc.code, str(exc))
