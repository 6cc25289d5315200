"""Metric labels are bounded (issue 21): a rejection's reason is a known code or `other`, and a
deleted pool's series go."""

from __future__ import annotations

from orchestrator.metrics import REJECTION_REASONS, Metrics


def label_values(metrics: Metrics, label: str) -> set[str]:
    return {s.labels[label] for family in metrics.registry.collect() for s in family.samples if label in s.labels}


def test_a_reason_outside_the_known_codes_is_counted_as_other() -> None:
    metrics = Metrics()
    for reason in [*REJECTION_REASONS, *(f"made-up-{i}" for i in range(100))]:
        metrics.count_rejected(reason)
    assert label_values(metrics, "reason") == {*REJECTION_REASONS, "other"}
    assert metrics.count("orchestrator_jobs_rejected", reason="other") == 100


def test_a_forgotten_pool_has_no_series_left_and_the_others_keep_theirs() -> None:
    metrics = Metrics()
    for pool in ("gone", "kept"):
        metrics.admitted.labels(pool).inc()
        metrics.steps.labels(pool, "no_job").inc()
        metrics.finished.labels(pool, "succeeded").inc()
        metrics.queue_wait.labels(pool).observe(0.1)
        metrics.peak(pool, 3)
    metrics.forget_pool("gone")
    assert label_values(metrics, "pool") == {"kept"}
    metrics.peak("gone", 1)  # a pool of that name again starts from nothing
    assert metrics.registry.get_sample_value("orchestrator_pool_in_flight_peak", {"pool": "gone"}) == 1
