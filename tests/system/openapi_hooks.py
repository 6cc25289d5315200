"""schemathesis hooks for tests/system/test_fuzz_openapi.py (named in schemathesis.toml).

A valid `wait` long-polls for up to two minutes, and a valid `follow` streams a job's output until
the job ends: the api under test has no runner, so both would hold a request until it times out.
Their valid values are replaced with ones that answer at once (still valid, so a case stays what
it was generated as); their invalid values, which must be refused, are left alone.

A pool's `shard` must also be below the number of dispatch shards, which Postgres holds and no
schema can say (the document bounds it by the most there may be): the api under test has one, so
a `shard` the schema allows is made 0, the one that exists; one it refuses is left alone. Likewise
a pool's `provisioner` must name one this system can load (what is installed, which no schema can
say): one of the form the schema allows is made `local`, the bundled one.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from pydantic import TypeAdapter, ValidationError

from schemas.pools import ProvisionerName, ShardNumber
from services.api.params import FOLLOWING, WAIT

_WAIT = TypeAdapter(WAIT.type)
_SHARD = TypeAdapter(ShardNumber)
_PROVISIONER = TypeAdapter(ProvisionerName)


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if isinstance(body, dict) and _valid(_SHARD, body.get("shard")):
        body["shard"] = 0
    if isinstance(body, dict) and _valid(_PROVISIONER, body.get("provisioner")):
        body["provisioner"] = "local"
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


def _valid(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value, strict=True)  # as the body is validated: 5.0 is 5, true is not
    except ValidationError:
        return False
    return True
