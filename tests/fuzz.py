"""What the fuzz tests share: hypothesis settings, bad-input strategies, a snapshot of every table,
and the count of cases run (printed at the end of the session, see conftest.py).

Bad input is built two ways: anything at all (bytes, any JSON), and a valid body with one field
spoiled (wrong type, out of range, beyond int64, NUL, lone surrogate, an unknown field). Whether a
body is bad is decided by the very model the door validates with: a body the model refuses must
be refused with a 4xx naming what was wrong and change nothing; a body it accepts may be
admitted or refused, but never answered with a 5xx or left unanswered.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

# Reproducible in CI (derandomize), no deadline on a shared 2-core machine, and fixtures that live
# for the whole test (a database per test, not per example: snapshots tell what each case did).
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

CASES: Counter[str] = Counter()


def count(test: str) -> None:
    CASES[test] += 1


# --- values that break things ------------------------------------------------------------------

BEYOND_INT64 = st.integers(min_value=2**63, max_value=2**200) | st.integers(min_value=-(2**200), max_value=-(2**63) - 1)
# Every code point, lone surrogates included, and NUL (which Postgres text and jsonb cannot hold).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.just("\x00") | st.just("a\x00b")
ODD_NUMBERS = (
    BEYOND_INT64
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-1, 0, 2**31, -(2**31) - 1, 1e308, -0.0])
)
SCALARS = st.none() | st.booleans() | ODD_NUMBERS | ANY_TEXT
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
UNKNOWN_FIELDS = st.sampled_from(["colour", "Pool", "", "\x00", "pool ", "__proto__"]) | ANY_TEXT


def dumps(value: Any) -> bytes:
    """JSON as a careless producer writes it: NaN and Infinity bare, surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


def spoiled(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[bytes]:
    """`base` with one field replaced by anything, or an unknown field added."""
    replaced = st.tuples(st.sampled_from(fields), ANY_JSON).map(lambda kv: {**base, kv[0]: kv[1]})
    added = st.tuples(UNKNOWN_FIELDS, ANY_JSON).map(lambda kv: {**base, kv[0]: kv[1]})
    return (replaced | added).map(dumps)


DEEP = b"[" * 100_000 + b"]" * 100_000
# Raw bodies that are not JSON, or not UTF-8, or JSON nested far deeper than any parser recurses:
# tried at every door (RAW_NASTY), and among the random ones.
RAW_NASTY = [b"", b"{", b"null", b"\x00", b'{"x": "\x00"}', b"\xff\xfe", DEEP, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
RAW = st.binary(max_size=64) | st.sampled_from(RAW_NASTY)


# The values that broke something once, tried in every field of every door (not left to chance).
NASTY: list[Any] = ["a\x00b", 2**64, -(2**63) - 1, 2**31, float("nan"), float("inf"), {"x": "\x00"}, ["\x00"]]


def every_field_spoiled(base: dict[str, Any], fields: list[str]) -> list[bytes]:
    """The explicit cases of a door: each raw nasty body, and each field given each NASTY value."""
    return [*RAW_NASTY, *(dumps({**base, field: value}) for field in fields for value in NASTY)]


def bodies(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[bytes]:
    return RAW | ANY_JSON.map(dumps) | spoiled(base, fields)


def refuses(model: type[BaseModel], body: bytes) -> bool:
    """Whether `model` (what the door validates with) refuses `body`."""
    try:
        model.model_validate_json(body)
    except ValidationError:
        return True
    return False
