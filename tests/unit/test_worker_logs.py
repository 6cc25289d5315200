"""The local provisioner's worker logs are deleted once older than the retention, but a live
worker's, however long it has been quiet."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.local_provisioner import prune_logs


def log(folder: Path, worker: str, age_s: float) -> Path:
    path = folder / f"{worker}.log"
    path.write_text("worker output\n")
    written = time.time() - age_s
    os.utime(path, (written, written))
    return path


def test_old_logs_go_and_fresh_or_live_ones_stay(tmp_path: Path) -> None:
    old, fresh = log(tmp_path, "w-old", 7200), log(tmp_path, "w-fresh", 60)
    quiet_live = log(tmp_path, "w-live", 7200)
    other = tmp_path / "notes.txt"  # not a worker's log
    other.write_text("keep")
    os.utime(other, (0, 0))
    assert prune_logs(tmp_path, 3600, keep=["w-live"]) == 1
    assert not old.exists()
    assert fresh.exists() and quiet_live.exists() and other.exists()
    assert prune_logs(tmp_path, 3600, keep=["w-live"]) == 0
