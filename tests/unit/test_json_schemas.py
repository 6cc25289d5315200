"""Every model's JSON Schema speaks JSON Schema: a bound pydantic could not translate shows up as
its own keyword (`ge`, `le`, ...), which clients and schemathesis ignore, so the document would
call valid what the api refuses (it did, for a reservation's `exit_code`)."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pydantic

import schemas.api
import schemas.events
import schemas.jobs
import schemas.pools
import schemas.rate_limits
import schemas.runners
import schemas.schedules

PYDANTIC_ONLY = {"ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"}


def models() -> list[type[pydantic.BaseModel]]:
    found = []
    modules = (schemas.api, schemas.events, schemas.jobs, schemas.pools, schemas.rate_limits, schemas.runners)
    for module in (*modules, schemas.schedules):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, pydantic.BaseModel) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def keywords(node: Any) -> set[str]:
    if isinstance(node, dict):
        names = set(node) - {"properties", "$defs"}  # under these, keys are field names
        for key, value in node.items():
            names |= (
                keywords(value) if key not in ("properties", "$defs") else set().union(*map(keywords, value.values()))
            )
        return names
    if isinstance(node, list):
        return set().union(*map(keywords, node)) if node else set()
    return set()


def test_no_model_states_a_bound_json_schema_does_not_know() -> None:
    untranslated = {
        model.__name__: sorted(found)
        for model in models()
        if (found := keywords(model.model_json_schema()) & PYDANTIC_ONLY)
    }
    assert untranslated == {}, json.dumps(untranslated)


def test_the_check_sees_an_untranslated_bound() -> None:
    assert keywords({"properties": {"ge": {"anyOf": [{"ge": 1, "type": "integer"}]}}}) & PYDANTIC_ONLY == {"ge"}
