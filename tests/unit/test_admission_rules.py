"""Admission's pure rules (services/admission/rules.py): whether a spec can ever run in its pool,
and when a shed producer should retry. The doors that apply them are tests/integration/test_admission.py;
whether a pool is overloaded (past max_active) is decided by the store under the pool's lock, so
it is tested there, not here."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from services.admission.rules import judge, retry_after_s

POOL = PoolConfig(labels=["linux", "x86_64"], allowed_plans=["ci"], max_concurrent=4)


@pytest.mark.parametrize(
    "spec",
    [
        {"labels": []},
        {"labels": ["linux", "x86_64"], "plan": "ci"},
        {"labels": ["linux", "linux"], "plan": "ci"},  # a repeated label asks for nothing more
    ],
)
def test_a_spec_the_pool_can_run_is_admitted(spec: dict[str, Any]) -> None:
    assert judge(JobSpec(pool="p", **{"plan": "ci", **spec}), POOL) is None


def test_any_plan_may_use_a_pool_that_names_none() -> None:
    open_pool = POOL.model_copy(update={"allowed_plans": []})
    assert judge(JobSpec(pool="p", plan="nightly"), open_pool) is None
    assert judge(JobSpec(pool="p"), open_pool) is None


@pytest.mark.parametrize(
    ("spec", "pool", "field", "says"),
    [
        ({}, None, "pool", "pool 'p' does not exist"),
        ({"labels": ["linux", "gpu", "arm64"]}, POOL, "labels", "cannot offer labels ['arm64', 'gpu']"),
        ({"labels": ["linux"], "plan": "nightly"}, POOL, "plan", "plan 'nightly' may not use pool 'p'"),
        ({"labels": ["linux"]}, POOL, "plan", "plan None may not use pool 'p'"),  # no plan is not a plan it allows
        ({"plan": "ci"}, POOL.model_copy(update={"max_concurrent": 0}), "pool", "max_concurrent = 0"),
    ],
    ids=["no-such-pool", "missing-labels", "plan-not-allowed", "no-plan", "nothing-can-run"],
)
def test_a_spec_that_can_never_run_is_unsatisfiable_naming_the_field(
    spec: dict[str, Any], pool: PoolConfig | None, field: str, says: str
) -> None:
    error = judge(JobSpec(pool="p", **spec), pool)
    assert error is not None
    assert (error.code, error.field) == ("unsatisfiable", field)
    assert says in error.message


def test_an_unlimited_pool_is_not_a_closed_one() -> None:
    """Negative max_concurrent means no cap; only 0 means nothing can ever run."""
    assert judge(JobSpec(pool="p", plan="ci"), POOL.model_copy(update={"max_concurrent": -1})) is None
    assert judge(JobSpec(pool="p", plan="ci"), POOL.model_copy(update={"max_concurrent": 1})) is None


def test_retry_after_is_bounded() -> None:
    assert retry_after_s(1, 0) == 60
    assert retry_after_s(1, 6000) == 1
    assert retry_after_s(2, 60) == 2
    assert retry_after_s(100, 10) == 60
