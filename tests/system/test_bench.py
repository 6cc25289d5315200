"""The benchmark runs end to end in its quick mode and reports sane numbers (never a speed: these
machines are noisy; the figures come from the full run, `python -m bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _quick(module: str, report: str, tmp_path: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`python -m <module> --quick` in `tmp_path`, on servers of its own: the run and its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", module, "--quick"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((tmp_path / "bench-results" / f"{report}.json").read_text())


def test_quick_benchmark_completes_with_sane_figures(tmp_path: Path) -> None:
    done, results = _quick("bench", "all", tmp_path, timeout=600)
    for key in (
        "end_to_end_jobs_per_s",
        "admission_jobs_per_s",
        "capped_jobs_per_s",
        "bare_asyncpg_jobs_per_s",
        "batched_skip_locked_jobs_per_s",
        "procrastinate_jobs_per_s",
    ):
        assert results[key] > 0, key
    assert 0 < results["capped_fraction_of_uncapped"] <= 1.5
    # Each kind's figure is its median run's (one run each with --quick).
    assert results["end_to_end_jobs_per_s_runs"] == [results["end_to_end_jobs_per_s"]]
    assert results["capped_jobs_per_s_runs"] == [results["capped_jobs_per_s"]]
    # Admission is timed from the first publish, as end to end is: never much slower (each is
    # polled every 10 ms, so not exactly never).
    assert results["admission_jobs_per_s"] >= 0.9 * results["end_to_end_jobs_per_s"]
    for key in ("wake_ms", "wake_to_assigned_ms"):
        assert results[key]["n"] > 0 and 0 < results[key]["p50"] <= results[key]["p99"], key
    # The runner acks after the claim: the hand-off's end is later than the claim's.
    assert results["wake_ms"]["p50"] >= results["wake_to_assigned_ms"]["p50"]
    for share in ("idle", "at_30pct", "at_80pct"):
        latency = results[f"submit_to_start_ms_{share}"]
        assert latency["n"] > 0 and 0 < latency["p50"] <= latency["max"], share
        # Stage by stage, each timestamp of a job's row no earlier than the one before.
        stages = latency["stages_p50"]
        assert list(stages) == ["admitted", "claimed", "acked", "started"] and min(stages.values()) >= 0, stages
        assert latency["cpu_ms_per_job"] > 0, share
    for key in ("hol_ratio", "hol_ratio_distinct_shapes", "hol_ratio_settled", "hol_ratio_distinct_shapes_settled"):
        assert results[key] > 0, key
    # One hop of each kind, timed at both paces (bench/hops.py): every one answered.
    for kind in ("nats_request_ms", "postgres_round_trip_ms", "postgres_commit_ms"):
        for pace, hop in results["hops"][kind].items():
            assert hop["n"] == 20 and 0 < hop["p50"] <= hop["p99"] <= hop["max"], (kind, pace, hop)
    # Delayed jobs start after their time (a start before it would read negative), every one.
    delayed, claimed = results["due_to_start_ms_delayed"], results["due_to_assigned_ms_delayed"]
    assert delayed["n"] == 50 and 0 <= delayed["p50"] <= delayed["p99"] <= delayed["max"], delayed
    assert claimed["n"] == 50 and 0 <= claimed["p50"] <= delayed["p50"], (claimed, delayed)  # claimed, then started
    assert 0 <= results["delayed_admitted_late"] <= 50
    # CPU per job: every process measured (embedded servers, Linux), each kind used some.
    split = results["cpu_ms_per_job_by_process"]
    assert set(split) == {"python", "nats", "postgres"} and all(v > 0 for v in split.values())
    assert results["cpu_ms_per_job"] == pytest.approx(sum(split.values()), abs=0.01)
    assert results["procrastinate_cpu_ms_per_job"] > 0
    # graphile-worker is not run in --quick (it needs node and an npm install): None, not 0.
    for key in ("graphile_worker_jobs_per_s", "graphile_worker_cpu_ms_per_job", "vs_graphile_worker"):
        assert results[key] is None or results[key] > 0, key
    assert results["fraction_of_machine_limit"] > 0
    # The same run with every service its own process: each of them measured, and the whole.
    procs = results["processes"]
    assert procs["end_to_end_jobs_per_s"] > 0 and procs["fraction_of_one_process"] > 0
    split = procs["cpu_ms_per_job_by_process"]
    assert set(split) == {"capacity", "admission", "dispatch", "api", "bench", "nats", "postgres"}
    # /proc counts CPU in 10 ms ticks: in a 500-job run a process with little to do (the api
    # hands out no job here) may read 0 ticks, never less, and the whole is never 0.
    assert all(v >= 0 for v in split.values()) and sum(split.values()) > 0
    assert procs["cpu_ms_per_job"] == pytest.approx(sum(split.values()), abs=0.01)
    # Over 1, 2 and 4 dispatch shards: each instance led a shard of its own, and was measured.
    for shards, run in results["shards"].items():
        assert run["end_to_end_jobs_per_s"] > 0 and run["fraction_of_one_shard"] > 0, shards
        assert len(set(run["shard_holders"].values())) == int(shards), run["shard_holders"]
        dispatchers = {name for name in run["cpu_ms_per_job_by_process"] if name.startswith("dispatch")}
        assert dispatchers == set(run["shard_holders"].values()), (dispatchers, run["shard_holders"])
    output = results["job_output"]
    assert output["log_path_mb_per_s"] > 0 and 0 < output["dispatch_with_printers_fraction"] <= 1.5
    assert output["log_kept_bytes"] == output["printed_mb"] * 1_048_576  # under the cap: every byte
    assert results["vs_bare_asyncpg"] > 0 and results["vs_procrastinate"] > 0
    assert results["failover"]["kill -9"]["median_ms"] > 0
    assert "goals (issues 8, 17, 19 and 23)" in done.stdout
    for key in (
        "cpu_ms_per_job",
        "hol_ratio_distinct_shapes",
        "submit_to_start_ms_idle.p99",
        "due_to_start_ms_delayed.p99",
        "vs_graphile_worker",
    ):
        assert key in done.stdout, key


def test_the_relays_two_ways_of_publishing_are_measured_at_each_size(tmp_path: Path) -> None:
    """`python -m bench.atomic`: what ATOMIC_BATCH_MIN rests on, each batch size both ways."""
    _, results = _quick("bench.atomic", "atomic", tmp_path, timeout=300)
    assert set(results) == {f"{size}_{way}" for size in (1, 64, 512) for way in ("atomic", "one_by_one")}
    for figures in results.values():
        assert figures["ms_per_batch"] > 0 and figures["client_us_per_event"] >= 0 and figures["nats_us_per_event"] >= 0
