"""What Postgres can store, said once for every model: a value it cannot hold is refused at the
door with the field named, never sent to the database to fail there (a 500, a request left
unanswered, a batch of other producers' jobs failed with it).

- Text and jsonb cannot hold NUL (\\u0000).
- jsonb holds JSON numbers: no NaN or infinity (JSON has neither; 1e400 parses as infinity).
- `integer` columns hold 32 bits.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, Field, GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypeAliasType

Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
# A JSON Schema pattern: text without NUL.
NO_NUL = r"^[^\x00]*$"

# NUL can only reach a parsed string through this escape: a raw NUL byte is not valid JSON.
_NUL_ESCAPE = b"\\u0000"


def unstorable(value: Any, path: str) -> str | None:
    """Why `value` (at `path`) cannot be stored, or None when it can."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path} contains a NUL character (\\u0000), which cannot be stored"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{path} is {value}: JSON numbers are finite"
    elif isinstance(value, dict):
        for k, v in value.items():
            why = unstorable(k, path) or unstorable(v, f"{path}.{k}")
            if why:
                return why
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            why = unstorable(v, f"{path}[{i}]")
            if why:
                return why
    return None


def _storable_json(value: dict[str, Any]) -> dict[str, Any]:
    why = unstorable(value, "")
    if why:
        raise ValueError(why.lstrip("."))
    return value


# What jsonb can hold, as a JSON Schema for the documents (`/openapi.json`): JSON whose strings
# and keys hold no NUL. Validation walks the value instead (`unstorable`), which is cheaper than
# this recursive union on every job, and says where the NUL is.
_NulFree = Annotated[str, Field(pattern=NO_NUL)]
StorableValue = TypeAliasType(
    "StorableValue",
    Union[_NulFree, int, float, bool, list["StorableValue"], dict[_NulFree, "StorableValue"], None],  # noqa: UP007
)
_STORABLE_VALUE = TypeAdapter(StorableValue)


class StorableJsonSchema:
    """Marks an object stored as jsonb: its documented fields as they are, any other field and
    its keys documented as storable JSON (no NUL), as the `AfterValidator` enforces."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        reference = handler(core_schema)
        schema = handler.resolve_ref_schema(reference)
        schema["additionalProperties"] = handler(_STORABLE_VALUE.core_schema)
        schema["propertyNames"] = {"pattern": NO_NUL}
        return reference


# Refuses what jsonb cannot hold, naming where it is.
storable_json = AfterValidator(_storable_json)
# An opaque JSON object stored as jsonb (a runner's metadata, a job's env).
JsonObject = Annotated[dict[str, Any], storable_json, StorableJsonSchema]


def nul_in(raw: bytes, parsed: BaseModel | list[BaseModel]) -> tuple[str, str] | None:
    """(field, message) when a message parsed from `raw` holds NUL anywhere, else None. Costs a
    byte search unless `raw` has the escape at all."""
    if _NUL_ESCAPE not in raw:
        return None
    models = parsed if isinstance(parsed, list) else [parsed]
    for i, model in enumerate(models):
        for name, value in model.model_dump().items():
            why = unstorable(value, name)
            if why and "NUL" in why:
                field = name if len(models) == 1 else f"{i}.{name}"
                return field, why if len(models) == 1 else f"{i}.{why}"
    return None
