"""Subject and stream names: `<namespace>.v1.<noun>.<verb>[.<pool>]`.

The namespace defaults to `orch` (the public contract); tests and co-hosted deployments give
each their own so they never hear one another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subjects:
    namespace: str = "orch"

    @property
    def root(self) -> str:
        return f"{self.namespace}.v1"

    # Intake: JetStream (durable, deduplicated by Nats-Msg-Id) and core request/reply.
    @property
    def submit(self) -> str:
        return f"{self.root}.jobs.submit"

    @property
    def submit_request(self) -> str:
        return f"{self.root}.jobs.submit.req"

    @property
    def intake_stream(self) -> str:
        return f"{self.namespace.upper()}_INTAKE"

    def job_event(self, verb: str, pool: str) -> str:
        """News for producers: admitted, rejected, assigned, started, finished, ..."""
        return f"{self.root}.jobs.{verb}.{pool}"

    def job_events(self, verb: str = "*") -> str:
        return f"{self.root}.jobs.{verb}.*"

    def cancel(self, runner_id: str) -> str:
        return f"{self.root}.runners.{runner_id}.cancel"

    def assign(self, runner_id: str) -> str:
        return f"{self.root}.runners.{runner_id}.assign"

    @property
    def runner_register(self) -> str:
        return f"{self.root}.runners.register"

    @property
    def runner_heartbeat(self) -> str:
        return f"{self.root}.runners.heartbeat"

    @property
    def runner_start(self) -> str:
        return f"{self.root}.runners.start"

    @property
    def runner_finish(self) -> str:
        return f"{self.root}.runners.finish"

    @property
    def runner_drain(self) -> str:
        return f"{self.root}.runners.drain"

    @property
    def runner_taints_changed(self) -> str:
        return f"{self.root}.runners.taints"

    def slot_available(self, pool: str = "*") -> str:
        return f"{self.root}.slots.available.{pool}"

    def capacity_unknown(self, pool: str = "*") -> str:
        return f"{self.root}.capacity.unknown.{pool}"

    # Leader election: the lease bucket (one key per dispatch shard) and its news.
    @property
    def lease_bucket(self) -> str:
        return f"{self.namespace}_leases"

    def leader_event(self, verb: str, shard: str) -> str:
        """elected | lost"""
        return f"{self.root}.leader.{verb}.{shard}"

    def leader_events(self, verb: str = "*") -> str:
        return f"{self.root}.leader.{verb}.*"

    def pool_updated(self, pool: str = "*") -> str:
        return f"{self.root}.pools.updated.{pool}"

    def pool_leader_changed(self, pool: str = "*") -> str:
        """A leader-mode pool's elected runner changed (seed 002)."""
        return f"{self.root}.pools.leader.{pool}"
