"""The benchmark runs end to end in its quick mode and reports sane numbers (never a speed: these
machines are noisy; the figures come from the full run, `python -m bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_completes_with_sane_figures(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}  # its own servers
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench-results" / "all.json").read_text())
    for key in ("end_to_end_jobs_per_s", "admission_jobs_per_s", "capped_jobs_per_s", "bare_asyncpg_jobs_per_s"):
        assert results[key] > 0, key
    assert results["procrastinate_jobs_per_s"] > 0
    assert 0 < results["capped_fraction_of_uncapped"] <= 1.5
    assert results["wake_ms"]["n"] > 0 and 0 < results["wake_ms"]["p50"] <= results["wake_ms"]["p99"]
    for share in ("30", "80"):
        latency = results[f"submit_to_start_ms_at_{share}pct"]
        assert latency["n"] > 0 and 0 < latency["p50"] <= latency["max"]
    assert results["hol_ratio"] > 0
    output = results["job_output"]
    assert output["log_path_mb_per_s"] > 0 and 0 < output["dispatch_with_printers_fraction"] <= 1.5
    assert output["log_kept_bytes"] == output["printed_mb"] * 1_048_576  # under the cap: every byte
    assert results["vs_bare_asyncpg"] > 0 and results["vs_procrastinate"] > 0
    assert results["failover"]["kill -9"]["median_ms"] > 0
    assert "goals (issues 8 and 17)" in done.stdout
