"""schemathesis hooks for tests/system/test_fuzz_openapi.py (named in schemathesis.toml).

A valid `wait` long-polls for up to two minutes, and a valid `follow` streams a job's output until
the job ends: the api under test has no runner, so both would hold a request until it times out.
Their valid values are replaced with ones that answer at once (still valid, so a case stays what
it was generated as); their invalid values, which must be refused, are left alone.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from pydantic import TypeAdapter, ValidationError

from services.api.params import FOLLOWING, WAIT

_WAIT = TypeAdapter(WAIT.type)


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    query = case.query
    if not query:
        return
    if "wait" in query and _valid_wait(query["wait"]):
        query["wait"] = "0"
    if str(query.get("follow")) in FOLLOWING:
        query["follow"] = "false"


def _valid_wait(value: Any) -> bool:
    try:
        _WAIT.validate_strings(str(value))
    except ValidationError:
        return False
    return True
