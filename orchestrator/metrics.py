"""Prometheus metrics: what a process counts as it happens, and what Postgres knows at scrape time.

Two kinds, kept apart on purpose:
- `Metrics`: counters and histograms of what the services in this process did (admitted,
  rejected, dispatched, finished, skipped steps, schedule fires, queue-wait and slot-to-assign
  latencies), one
  instance per process, made by the runtime and handed to each service it builds. A service
  built without one (tests, the benchmark) gets its own unserved instance.
- `QueueCollector`: the state of the queue (depth, in-flight, free slots, oldest wait, runners
  by state) read from Postgres, the truth, in two cheap queries when scraped. Never counted in
  memory, so no process's view drifts and every process that serves it says the same.

Hot-path cost: services add to counters once per batch and pool, not once per job, and only the
histograms see every job (a bucket increment, a few hundred nanoseconds).

Bounded (issue 21): every label value is from a fixed set or a pool that exists. Pools come from
store rows, or from bus messages checked against the pools this process knows
(`orchestrator.known_pools`) before they get here; a deleted pool's series are dropped
(`forget_pool`). A rejection's reason outside the known codes is counted as `other`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.bus import Bus
from orchestrator.leadership import Leaderships
from orchestrator.store import Store

# The `_created` twin of every counter doubles the series for a timestamp nobody here reads.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The codes a refusal can have (ErrorDetail.code at admission's doors); anything else is "other".
REJECTION_REASONS = frozenset(
    {"malformed", "invalid", "unsatisfiable", "conflict", "concurrency_limit", "overloaded", "unavailable", "internal"}
)

# Seconds a job waits in the queue: from milliseconds (a free slot) to an hour (a paused pool).
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Seconds from a slot announced free to a job assigned to it: the goal is single milliseconds.
SLOT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """What the services of one process count. Names follow Prometheus conventions (`_total` is
    appended to counters by the client); every metric has help text (promtool insists)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.admitted = Counter("orchestrator_jobs_admitted", "Jobs admitted into the queue.", ["pool"], registry=r)
        self.rejected = Counter(
            "orchestrator_jobs_rejected",
            "Jobs refused at admission, by reason (malformed, invalid, unsatisfiable, conflict, concurrency_limit, "
            "overloaded).",
            ["reason"],
            registry=r,
        )
        self.dispatched = Counter(
            "orchestrator_jobs_dispatched", "Jobs handed to a runner that acked the assignment.", ["pool"], registry=r
        )
        self.finished = Counter(
            "orchestrator_jobs_finished",
            "Job attempts ended as their runner reported, by outcome (succeeded, failed, timed_out, cancelled).",
            ["pool", "outcome"],
            registry=r,
        )
        self.retried = Counter(
            "orchestrator_jobs_retried",
            "Job attempts their runner reported failed or timed_out that the job's retry policy queued again "
            "for another attempt (a lost runner's jobs are counted in the log line that releases them).",
            ["pool", "outcome"],
            registry=r,
        )
        self.at_capacity = Counter(
            "orchestrator_jobs_at_capacity_skips",
            "Dispatch steps that claimed nothing because the pool was at max_concurrent.",
            ["pool"],
            registry=r,
        )
        self.capacity_unknown = Counter(
            "orchestrator_capacity_unknown_skips",
            "Dispatch steps skipped because in-flight jobs could not be counted (Postgres unreachable).",
            ["pool"],
            registry=r,
        )
        self.steps = Counter(
            "orchestrator_dispatch_steps",
            "Dispatch steps by the status that ended them (dispatched, no_job, no_runner, at_capacity, ...).",
            ["pool", "status"],
            registry=r,
        )
        self.held_back = Counter(
            "orchestrator_dispatch_held_back",
            "Dispatch steps that passed over waiting jobs held back by flow control, by reason: concurrency_key "
            "(a key at its limit), rate_limit (a rate limit with no start left), max_starts_per_s (the pool's).",
            ["pool", "reason"],
            registry=r,
        )
        self.fleet = Counter(
            "orchestrator_fleet_reconciles",
            "Provisioner outcomes by pool: spawned (a worker started), at_cap (a worker wanted past max_workers), "
            "capacity_unknown (the fleet could not be counted, so nothing was spawned).",
            ["pool", "outcome"],
            registry=r,
        )
        self.pruned = Counter(
            "orchestrator_rows_pruned",
            "Rows the retention pruner deleted, by table (jobs, rejections, runners, workers, job_shapes).",
            ["table"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "orchestrator_queue_wait_seconds",
            "Time from admission to assignment of the jobs this process dispatched.",
            ["pool"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.slot_to_assign = Histogram(
            "orchestrator_slot_to_assign_seconds",
            "Time from a slot announced free (SlotAvailable) to the next job assigned in its pool, while work waited.",
            ["pool"],
            buckets=SLOT_BUCKETS,
            registry=r,
        )
        self.in_flight_peak = Gauge(
            "orchestrator_pool_in_flight_peak",
            "The largest in-flight count (assigned + running) any claim of this process left in the pool; "
            "compare with orchestrator_pool_max_concurrent.",
            ["pool"],
            registry=r,
        )
        self.schedule_fires = Counter(
            "orchestrator_schedule_fires",
            "Schedule fire times handled, by outcome: fired (a job submitted), overlap (skipped: a job it fired "
            "was still live), missed (skipped by catch_up), rejected (admission refused the job).",
            ["outcome"],
            registry=r,
        )
        self.schedule_lateness = Histogram(
            "orchestrator_schedule_fire_lateness_seconds",
            "Time from a schedule's fire time to its job's admission.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self._peaks: dict[str, int] = {}  # by pool: dropped with the pool's series (`forget_pool`)
        self._per_pool = (
            self.admitted,
            self.dispatched,
            self.finished,
            self.retried,
            self.at_capacity,
            self.capacity_unknown,
            self.steps,
            self.held_back,
            self.fleet,
            self.queue_wait,
            self.slot_to_assign,
            self.in_flight_peak,
        )

    def count(self, name: str, **labels: str) -> float:
        """The value of a counter of this process (0 before its first increment): what a test or a
        benchmark reads, the same number Prometheus scrapes."""
        return self.registry.get_sample_value(f"{name}_total", labels) or 0.0

    def count_rejected(self, reason: str) -> None:
        self.rejected.labels(reason if reason in REJECTION_REASONS else "other").inc()

    def forget_pool(self, pool: str) -> None:
        """Drop every series of a deleted pool: a name used once must not be kept for ever."""
        for metric in self._per_pool:
            metric.remove_by_labels({"pool": pool})
        self._peaks.pop(pool, None)

    def peak(self, pool: str, in_flight: int) -> None:
        if in_flight > self._peaks.get(pool, -1):
            self._peaks[pool] = in_flight
            self.in_flight_peak.labels(pool).set(in_flight)

    def watch(self, leaderships: Leaderships) -> None:
        """Export whether this process leads each dispatch shard, read when scraped."""
        self.registry.register(_LeaderCollector(leaderships))

    def watch_bus(self, bus: Bus) -> None:
        """Export the messages NATS dropped because a subscription of `bus` fell behind."""
        self.registry.register(_DroppedCollector(bus))


class _LeaderCollector(Collector):
    def __init__(self, leaderships: Leaderships) -> None:
        self.leaderships = leaderships

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "orchestrator_dispatch_leader",
            "1 while this instance holds the shard's dispatch lease (and dispatches its pools), else 0.",
            labels=["shard", "instance"],
        )
        for leadership in self.leaderships:
            g.add_metric([leadership.shard, leadership.holder], 1.0 if leadership.leading else 0.0)
        yield g


class _DroppedCollector(Collector):
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "orchestrator_bus_dropped_messages",
            "Messages NATS dropped because a subscription's handlers fell behind (slow consumer), by subscription.",
            labels=["subscription"],
        )
        for subject, n in sorted(self.bus.dropped.items()):
            c.add_metric([subject], float(n))
        yield c


def _gauge(name: str, help_text: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> Metric:
    g = GaugeMetricFamily(name, help_text, labels=labels)
    for values, value in samples:
        g.add_metric(values, value)
    return g


class QueueCollector(Collector):
    """Queue gauges from Postgres. prometheus_client collects synchronously, so the scrape handler
    awaits `refresh()` first and the collector yields that snapshot."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pools: list[dict[str, Any]] = []
        self.runners: list[dict[str, Any]] = []
        self.up = False

    async def refresh(self) -> None:
        try:
            self.pools, self.runners = await self.store.metrics_snapshot()
            self.up = True
        except Exception:  # a scrape must still answer, saying the store could not be read
            self.pools, self.runners, self.up = [], [], False

    def collect(self) -> Iterator[Metric]:
        yield _gauge("orchestrator_store_up", "1 if the queue gauges could be read from Postgres.", [], [([], self.up)])
        if not self.up:
            return
        pools = self.pools
        per_pool = [
            ("orchestrator_pool_queued", "Jobs queued in the pool (deferred ones included).", "queued"),
            (
                "orchestrator_pool_deferred",
                "Queued jobs of the pool not due yet: delayed (run_at, delay_s) or waiting out a retry backoff.",
                "deferred",
            ),
            ("orchestrator_pool_in_flight", "Jobs of the pool assigned or running.", "in_flight"),
            (
                "orchestrator_pool_free_slots",
                "Slots a job could take now: free slots of active runners, within max_concurrent.",
                "free",
            ),
            ("orchestrator_pool_max_concurrent", "The pool's max_concurrent (negative: unlimited).", "max_concurrent"),
            ("orchestrator_pool_max_active", "The pool's max_active (negative: unlimited).", "max_active"),
            (
                "orchestrator_pool_oldest_queued_seconds",
                "How long the pool's oldest due queued job has waited since it was due (0 when none is).",
                "oldest_queued_s",
            ),
            ("orchestrator_pool_paused", "1 while the pool is paused (jobs are admitted, not dispatched).", "paused"),
        ]
        for name, help_text, column in per_pool:
            yield _gauge(name, help_text, ["pool"], (([p["pool"]], float(p[column])) for p in pools))
        yield _gauge(
            "orchestrator_pool_queued_held_back",
            "Queued jobs a flow control holds back now, by reason: concurrency_key (its key is at its limit), "
            "rate_limit (its rate limit has no start left).",
            ["pool", "reason"],
            (
                ([p["pool"], reason], float(p[column]))
                for p in pools
                for reason, column in (("concurrency_key", "held_by_key"), ("rate_limit", "held_by_rate"))
            ),
        )
        yield _gauge(
            "orchestrator_runners",
            "Registered runners by state (active, suspect, draining, lost).",
            ["pool", "state"],
            (([r["pool"], r["state"]], float(r["runners"])) for r in self.runners),
        )
        yield _gauge(
            "orchestrator_runner_slots",
            "Slots of registered runners by state.",
            ["pool", "state"],
            (([r["pool"], r["state"]], float(r["slots"])) for r in self.runners),
        )


def exposition(metrics: Metrics, queue: QueueCollector | None = None) -> bytes:
    """The text of `GET /metrics`: this process's counters, and the queue gauges when given
    (refreshed by the caller)."""
    text = generate_latest(metrics.registry)
    if queue is not None:  # anything with collect() is a registry to the exposition
        text += generate_latest(queue)  # type: ignore[arg-type]
    return text
