"""`orchestrator submit` refuses what the API refuses, before it sends anything: `--timeout 0` is
not "no timeout" (omitting the option is), as `timeout_s: 0` is a 422 at every other door."""

from __future__ import annotations

import asyncio

import pytest

from app.cli import main
from app.runtime import Runtime
from orchestrator.pools import change_pool
from orchestrator.store import Store
from schemas.pools import PoolConfig


async def test_submit_refuses_a_timeout_of_zero_naming_the_option(
    front: Runtime, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCH_URL", front.http_url or "")

    async def submit(*args: str) -> int:
        try:  # the CLI blocks; the API runs on this loop
            return await asyncio.to_thread(main, ["submit", *args, "--", "true"])
        except SystemExit as exc:  # argparse's own errors
            return int(exc.code or 0)

    for timeout in ("0", "-1", "nan", "soon"):
        assert await submit("--timeout", timeout) == 2, timeout
        assert "argument --timeout:" in capsys.readouterr().err
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []
    assert front.store is not None and front.bus is not None
    await change_pool(front.store, front.bus, "default", config=PoolConfig())
    assert await submit("--timeout", "0.5") == 0
    [job] = await store.job_list(pool=None, state=None, key=None, limit=10)
    assert job["timeout_s"] == 0.5
