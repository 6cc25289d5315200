"""Every process of the application runs its work with the cyclic collector tuned for a service."""

import json
import subprocess
import sys

from app.main_loop import GC_THRESHOLDS

# In a process of its own: run() tunes the collector of the whole process.
PROBE = """
import gc, json
from app.main_loop import run

async def probe():
    return {"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}

first = run(probe())
alive = [[] for _ in range(1000)]  # made after the first run: a second freeze would keep them for good
print(json.dumps({"first": first, "second": run(probe())}))
"""


def test_a_process_runs_its_work_with_the_collector_tuned_once() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(out.stdout)
    assert tuple(seen["first"]["thresholds"]) == GC_THRESHOLDS
    assert seen["first"]["frozen"] > 0  # what was imported before the work began is out of the collector's walks
    # Tuned once: nothing made since is frozen (frozen objects may still be freed by their refcounts).
    assert seen["second"]["frozen"] <= seen["first"]["frozen"]
