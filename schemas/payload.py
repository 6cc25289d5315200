"""A job's payload: opaque JSON for its runner, except the three fields the bundled runner reads
(`command`, `env`, `cwd`), whose shape is checked at the door, so a job is never admitted only to
fail (or run with what it did not mean) when it runs. Every door validates a job spec with these
rules: HTTP, request/reply, JetStream, and a schedule's fires (its job validated again each time).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from schemas.storable import NO_NUL

# NUL is refused for the whole payload at once (storable_json); this says so in the documents.
_Text = Annotated[str, Field(json_schema_extra={"pattern": NO_NUL})]
# An environment variable's name as the runner can set it: not empty, no '=' (execve would end
# the name there, so `A=B` would set A) and no NUL.
EnvName = Annotated[str, StringConstraints(pattern=r"^[^=\x00]+$")]

# Validation context for a spec read back from the store (a schedule's job, as its view shows
# it): it was valid when stored. A rule added since (payload.env's) refuses it where it is used
# (the next fire, with the reason recorded), not where it is only shown.
STORED: Final = {"stored": True}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _command(value: Any, handler: ValidatorFunctionWrapHandler) -> list[str]:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "command",
            'must be a non-empty list of strings, the program and its arguments (e.g. ["echo", "hi"]), not {shown}',
            {"shown": _shown(value)},
        ) from None


def _env_problem(env: Any) -> str | None:
    """Why `env` is not a set of variables the runner can pass on as given, or None. Admitted, the
    runner made strings of anything (1 as "1", null as "None"), and a name `A=B` failed its spawn."""
    if not isinstance(env, dict):
        return f'must be an object of variables, names to string values (e.g. {{"CI": "1"}}), not {_shown(env)}'
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            return f"has the variable name {_shown(name)}: a name is a non-empty string without '=' or NUL"
        if not isinstance(value, str):
            return f'{name!r} is {_shown(value)}: a value is a string (e.g. "1", not 1)'
        if "\x00" in value:
            return f"{name!r} contains a NUL character (\\u0000), which no environment can hold"
    return None


def _env(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """`payload.env` checked, naming the bad variable; as it is when read back as STORED."""
    if info.context and info.context.get("stored"):
        return value  # storable JSON all the same (storable_json)
    why = _env_problem(value)
    if why is not None:
        raise PydanticCustomError("env", "{why}", {"why": why})
    return handler(value)


def _as_given(env: Any) -> Any:
    return env


class JobPayload(TypedDict, total=False):
    """A job's payload: opaque JSON for its runner. The bundled runner reads these three fields;
    any other field is the job's own. A payload without `command` is a reservation (seed 003)."""

    __pydantic_config__ = ConfigDict(extra="allow", strict=True)
    command: Annotated[list[_Text], Field(min_length=1), WrapValidator(_command)]
    # Names matching EnvName and no others (pydantic documents only `patternProperties`). Written
    # as given: a stored spec from before the rule (STORED) may hold other values.
    env: Annotated[
        dict[EnvName, _Text],
        Field(json_schema_extra={"additionalProperties": False}),
        WrapValidator(_env),
        PlainSerializer(_as_given),
    ]
    cwd: Annotated[_Text, Field(min_length=1)]
