"""ORCH_NATS_REPLICAS (issue 22): the intake, job-events and job-output streams and the lease
bucket are created with it; an existing one with fewer is scaled up where the server allows, kept
with a warning where it does not, never scaled down; more than the server can place stops
start-up naming the setting. On a NATS cluster of three (tests/nats_cluster.py), and on the
session's single server."""

from __future__ import annotations

import logging

import pytest

from orchestrator.bus import Bus, Subjects
from orchestrator.bus.job_logs import JobLogs
from orchestrator.bus.lease import open_bucket
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings
from tests.nats_cluster import NatsCluster


async def _bus(url: str, namespace: str, replicas: int) -> Bus:
    bus = Bus(url, Subjects(namespace), name="test-replicas", replicas=replicas)
    await bus.connect()
    return bus


async def _ensure_all(bus: Bus) -> list[str]:
    """Every stream and the bucket a system makes; their stream names."""
    await bus.ensure_intake_stream()
    await bus.ensure_job_events_stream(3600)
    await JobLogs(bus).ensure_stream(3600, None)
    await open_bucket(bus)
    s = bus.subjects
    return [s.intake_stream, s.job_events_stream, s.job_logs_stream, f"KV_{s.lease_bucket}"]


async def test_every_stream_and_the_lease_bucket_have_the_replicas_asked_for(nats_cluster: NatsCluster) -> None:
    bus = await _bus(nats_cluster.url, "rep", 3)
    try:
        streams = await _ensure_all(bus)
        assert [await nats_cluster.stream_replicas(s) for s in streams] == [3, 3, 3, 3]
        await bus.submit(b'{"pool": "p"}', "k1")  # and they take writes
    finally:
        await bus.close()


async def test_existing_streams_are_scaled_up_never_down(nats_cluster: NatsCluster) -> None:
    one = await _bus(nats_cluster.url, "grow", 1)
    three = await _bus(nats_cluster.url, "grow", 3)
    try:
        streams = await _ensure_all(one)
        assert [await nats_cluster.stream_replicas(s) for s in streams] == [1, 1, 1, 1]
        await _ensure_all(three)  # a deployment moved to ORCH_NATS_REPLICAS=3
        assert [await nats_cluster.stream_replicas(s) for s in streams] == [3, 3, 3, 3]
        await _ensure_all(one)  # a process left at the default must not take copies away
        assert [await nats_cluster.stream_replicas(s) for s in streams] == [3, 3, 3, 3]
    finally:
        await one.close()
        await three.close()


async def test_more_replicas_than_nodes_stops_start_up_naming_the_setting(nats_cluster: NatsCluster) -> None:
    bus = await _bus(nats_cluster.url, "five", 5)
    try:
        with pytest.raises(ConfigurationError, match="ORCH_NATS_REPLICAS to at most the number of nodes"):
            await bus.ensure_intake_stream()
        with pytest.raises(ConfigurationError, match="ORCH_NATS_REPLICAS"):
            await open_bucket(bus)
    finally:
        await bus.close()


async def test_a_single_server_refuses_replicas_at_creation_and_keeps_an_existing_stream_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.nats_url
    fresh = await _bus(settings.nats_url, f"{settings.namespace}x", 3)
    one = await _bus(settings.nats_url, settings.namespace, 1)
    three = await _bus(settings.nats_url, settings.namespace, 3)  # the same streams, asked for with 3
    try:
        with pytest.raises(ConfigurationError, match="not supported in non-clustered mode"):
            await fresh.ensure_intake_stream()
        await one.ensure_intake_stream()
        with caplog.at_level(logging.WARNING, logger="orchestrator.bus"):
            await three.ensure_intake_stream()
        assert any("keeps its 1 replicas" in r.getMessage() for r in caplog.records)
        info = await three.js.stream_info(three.subjects.intake_stream)
        assert info.config.num_replicas == 1
        await three.submit(b'{"pool": "p"}', "still-works")
    finally:
        for bus in (fresh, one, three):
            await bus.close()
