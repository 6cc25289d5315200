"""Admission's pure rules (services/admission/rules.py): when a shed producer should retry. The
doors that apply them are tests/integration/test_admission.py."""

from __future__ import annotations

from services.admission.rules import retry_after_s


def test_retry_after_is_bounded() -> None:
    assert retry_after_s(1, 0) == 60
    assert retry_after_s(1, 6000) == 1
    assert retry_after_s(2, 60) == 2
    assert retry_after_s(100, 10) == 60
