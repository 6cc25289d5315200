"""A delayed job's spec (issue 23): `run_at` is an RFC 3339 time with an offset, `delay_s` a
bounded number of seconds, never both; a refusal names the field. The same instant written with
two offsets is the same spec (idempotency compares canonical specs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas.events import error_from_validation
from schemas.jobs import JobSpec


def refused(body: str) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate_json(body)
    error = error_from_validation(caught.value)
    return error.field, error.message


def soon(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('"2026-03-29T02:30:00"', "no UTC offset"),  # naive: on which clock?
        ('"2026-03-29"', "not an RFC 3339 time"),
        ('"tomorrow"', "not an RFC 3339 time"),
        ("1774747800", "must be an RFC 3339 time"),  # a number is not a time here
        ('"2026-02-30T10:00:00Z"', "not a valid time"),
        (f'"{(soon(days=400)).isoformat()}"', "days ahead"),
    ],
)
def test_a_bad_run_at_is_refused_naming_it(value: str, said: str) -> None:
    field, message = refused(f'{{"pool": "p", "run_at": {value}}}')
    assert field == "run_at" and said in message, message


@pytest.mark.parametrize("value", ["0", "-1", "31708801", '"5"'])
def test_a_bad_delay_is_refused_naming_it(value: str) -> None:
    assert refused(f'{{"pool": "p", "delay_s": {value}}}')[0] == "delay_s"


def test_run_at_and_delay_s_together_are_refused() -> None:
    at = soon(minutes=5).isoformat()
    field, message = refused(f'{{"pool": "p", "run_at": "{at}", "delay_s": 5}}')
    assert field == "delay_s" and "not both" in message


def test_run_at_is_kept_in_utc_and_one_instant_is_one_spec_whatever_its_offset() -> None:
    at = soon(hours=2).replace(microsecond=0)
    berlin = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    shifted = (at + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S") + "+01:00"
    one = JobSpec.model_validate_json(f'{{"pool": "p", "run_at": "{berlin}"}}')
    two = JobSpec.model_validate_json(f'{{"pool": "p", "run_at": "{shifted}"}}')
    assert one.run_at == at and one.run_at.tzinfo == UTC  # type: ignore[union-attr]
    assert one.canonical() == two.canonical()
    later = JobSpec.model_validate_json(f'{{"pool": "p", "run_at": "{(at + timedelta(seconds=1)).isoformat()}"}}')
    assert later.canonical() != one.canonical()


def test_a_spec_without_a_delay_compares_as_before_delays_existed() -> None:
    # Stored before `run_at` and `delay_s` existed, a job's canonical spec had neither key.
    assert not {"run_at", "delay_s"} & JobSpec(pool="p").canonical().keys()
    assert JobSpec(pool="p", delay_s=30).canonical()["delay_s"] == 30
