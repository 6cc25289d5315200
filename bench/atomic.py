"""What the relay's two ways of publishing a batch of job events cost (ATOMIC_BATCH_MIN).

    python -m bench.atomic [--quick]

On an embedded nats-server of its own, a stream configured as the job-events stream is (file
storage, a duplicate window, atomic batches allowed), the relay's publish (bus/job_events.py) of
batches of 1 to 512 durable events, each size both ways: as JetStream atomic batches, and one by
one, pipelined. Per size and way: ms per batch (the wait for its last PubAck) and µs of CPU per
event, nats-server's and this process's (the client's). An atomic batch has a fixed cost in
nats-server whatever its size; one by one costs the client more per event: the sizes where each
is cheaper say where `ATOMIC_BATCH_MIN` belongs.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import cpu
from bench.harness import command
from orchestrator.bus import Bus, Subjects, job_events
from orchestrator.embedded import EmbeddedNats
from orchestrator.store import OutboxRow

SIZES = (1, 4, 16, 64, 128, 256, 512)
EVENTS = 6000  # per size and way (at least 20 batches)


async def measure(quick: bool) -> dict[str, Any]:
    sizes, events = ((1, 64, 512), 600) if quick else (SIZES, EVENTS)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="orch-bench-atomic-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        bus = Bus(await server.start(), Subjects())
        try:
            await bus.connect()
            await bus.ensure_job_events_stream(3600)
            if not bus.atomic_events:
                return {"skipped": "this nats-server takes no atomic batches"}
            nats, client = cpu.process(server.pid), cpu.process(os.getpid())
            body = b'{"type": "JobFinished", "v": 1, "pool": "bench", "state": "succeeded"}' + b" " * 200
            subject = Subjects.job_finished.at("bench").relative
            for size in sizes:
                batches = max(20, events // size)
                for way, atomic in (("atomic", True), ("one_by_one", False)):
                    used = cpu.Meter({"nats": nats, "client": client})
                    used.start()
                    began = time.perf_counter()
                    for _ in range(batches):
                        rows = [OutboxRow(seq, uuid.uuid4(), subject, body, True) for seq in range(size)]
                        await job_events.publish(bus, rows, atomic=atomic, atomic_min=1)
                    elapsed = time.perf_counter() - began
                    spent = used.stop()
                    results[f"{size}_{way}"] = {
                        "ms_per_batch": round(elapsed / batches * 1000, 3),
                        "nats_us_per_event": round(spent["nats"] / (batches * size) * 1e6, 1),
                        "client_us_per_event": round(spent["client"] / (batches * size) * 1e6, 1),
                    }
        finally:
            await bus.close()
            await server.stop()
    return results


if __name__ == "__main__":
    command("atomic", measure, __doc__ or "")
