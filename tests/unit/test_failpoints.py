"""Failpoints (orchestrator/failpoints.py), the fault hooks the outbox's crash tests use
(tests/system/test_outbox.py): a spec that cannot be honoured is refused, not ignored, and
`N*action` fires exactly N times."""

from __future__ import annotations

import pytest

from orchestrator import failpoints


def test_failpoints_parse_and_refuse_what_they_cannot_do() -> None:
    assert failpoints.parse("a=exit; b=2*raise") == {"a": ("exit", None), "b": ("raise", 2)}
    with pytest.raises(ValueError, match="is not name=action"):
        failpoints.parse("oops")
    with pytest.raises(ValueError, match="'explode' is not one of"):
        failpoints.parse("a=explode")
    failpoints.enable("t", "raise", times=2)
    for _ in range(2):
        with pytest.raises(failpoints.FailpointHit):
            failpoints.failpoint("t")
    failpoints.failpoint("t")  # off again after two
