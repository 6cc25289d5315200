"""The path and query parameters of the API, each declared once with the type that validates it.

A handler reads a parameter with `PARAM.parse(request)`, and `/openapi.json` documents it with
the JSON Schema of that same type, so what the document calls valid is what the server accepts:
a value the type refuses is a 422 naming the parameter (`BadParam`, answered by the error
middleware), never a value the document promised to take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import Field, TypeAdapter, ValidationError

from schemas.jobs import JobState, Key, Name
from schemas.storable import NO_NUL

R = TypeVar("R")
C = TypeVar("C")
# The longest long poll; a client wanting longer polls again.
MAX_WAIT_S = 120.0
Text = Annotated[str, Field(pattern=NO_NUL)]
# Servo's query values (seed 003): kept in the job's payload, so text Postgres can hold.
ServoValue = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]


class BadParam(ValueError):
    """A parameter its type refuses: answered 422, naming it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    type: Any = Text
    required: bool = False
    where: Literal["query", "path"] = "query"
    default: Any = None
    # Why a refused value was refused ("<name> '<value>' <hint>"), when pydantic's words would not
    # say it well.
    hint: str | None = field(default=None, compare=False)

    @cached_property
    def _adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.type)

    def schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    def parse(self, request: web.Request) -> Any:
        """The parameter's value (its default when absent), or BadParam."""
        raw = request.match_info.get(self.name) if self.where == "path" else request.query.get(self.name)
        if self.required and not raw:
            raise BadParam(self.name, f"{self.name} is required: {self.description}")
        if raw is None:
            return self.default
        try:
            return self._adapter.validate_strings(raw)
        except ValidationError as exc:
            given = f"{self.name} {raw[:40]!r}"
            why = f"{given} {self.hint}" if self.hint else f"{given}: {exc.errors(include_url=False)[0]['msg']}"
            raise BadParam(self.name, why) from None

    def openapi(self) -> dict[str, Any]:
        schema = self.schema()
        if self.default is not None:
            schema["default"] = self.default
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": schema,
        }


def path(name: str, description: str, type: Any) -> Param:
    return Param(name, description, type, required=True, where="path")


def page(rows: Sequence[R], limit: int, cursor: Callable[[R], C]) -> tuple[list[R], C | None]:
    """One page of a listing read `limit + 1` rows at a time: its first `limit` rows, and the
    cursor of the next page (the last row's), None when no row is left after them."""
    if len(rows) > limit:
        return list(rows[:limit]), cursor(rows[limit - 1])
    return list(rows), None


# --- path ----------------------------------------------------------------------------------------
# Ids are documented with their type; a handler answers an id of the wrong shape as it answers an
# unknown one, 404 (the contract), so only the pool name of a PUT or PATCH is parsed.

JOB_ID = path("id", "the job's id", UUID)
POOL_NAME = Param(
    "name",
    "the pool's name",
    Name,
    required=True,
    where="path",
    hint="is not a pool name: letters, digits, '_' or '-' (at most 64), starting alphanumeric",
)
SCHEDULE_NAME = Param(
    "name",
    "the schedule's name",
    Name,
    required=True,
    where="path",
    hint="is not a schedule name: letters, digits, '_' or '-' (at most 64), starting alphanumeric",
)
RUNNER_ID = path("id", "the runner's id", Name)
PROFILE = path("pool", "Servo's profile: the pool", Name)
SERVO_ID = path("unique_id", "the client's id for the job (its enqueue's unique_id)", ServoValue)

# --- query ---------------------------------------------------------------------------------------

LIMIT = Param("limit", "at most this many", Annotated[int, Field(ge=1, le=1000)], default=100)
# A page's cursor: the `next` of the page before. Runners are listed in id order, rejections
# newest first (by id), so each cursor is the last id of the page before.
_CURSOR_HINT = "is not a cursor: give the `next` of the previous page"
RUNNERS_AFTER = Param("after", "the page after this one (the `next` of the previous page)", Name, hint=_CURSOR_HINT)
REJECTIONS_AFTER = Param(
    "after",
    "the page after this one (the `next` of the previous page)",
    Annotated[int, Field(ge=1, le=2**63 - 1)],
    hint=_CURSOR_HINT,
)
POOL = Param("pool", "only this pool", Name)
STATE = Param("state", "only this state", JobState)
KEY = Param("key", "only this key", Key)
REASON = Param("reason", "only this reason (malformed, invalid, unsatisfiable, overloaded, conflict)")
# Documented only: a missing or wrong token is a 403 (seed 003), compared in constant time.
TOKEN = Param("token", "the job's take token, from its submission", required=True)
OPTIONAL_TOKEN = Param("token", "the job's take token (not needed with the operator role)")
WAIT = Param(
    "wait",
    f"seconds to long-poll for a runner (0 to {MAX_WAIT_S:g})",
    Annotated[float, Field(ge=0, le=MAX_WAIT_S)],
    default=0.0,
    hint=f"is not a number of seconds between 0 and {MAX_WAIT_S:g}",
)
OFFSET = Param(
    "offset",
    "from this byte of the output (SSE: or Last-Event-ID)",
    Annotated[int, Field(ge=0, le=10**18 - 1)],
    default=0,
    hint="is not a byte offset (0 or more)",
)
FOLLOW = Param(
    "follow",
    "stream until the job has ended and every byte is out (true, 1, yes; or false, 0, no)",
    Literal["true", "1", "yes", "false", "0", "no", ""],
    default="false",
    hint="is not true or false",
)
FOLLOWING = ("true", "1", "yes")
UNIQUE_ID = Param("unique_id", "the client's id for the job", ServoValue, required=True)
QUALIFIED_REPO = Param("qualified_repo", "owner/repo", ServoValue, required=True)
RUN_ID = Param("run_id", "CI run", ServoValue, required=True)
