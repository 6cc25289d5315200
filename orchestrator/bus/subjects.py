"""Subject and stream names: `<namespace>.v1.<noun>.<verb>[.<pool>]`.

The namespace defaults to `orch` (the public contract); tests and co-hosted deployments give
each their own so they never hear one another.
"""

from __future__ import annotations

from dataclasses import dataclass

# The verbs of the job events the outbox relay publishes to the job-events stream, one subject
# each per pool: `<ns>.v1.jobs.<verb>.<pool>`. Listed, not `jobs.*.*`: the stream must not
# capture `jobs.submit` (the intake's) nor `jobs.submit.req` (a request JetStream would answer).
JOB_EVENT_VERBS = ("admitted", "rejected", "assigned", "started", "requeued", "finished", "expired")


def job_news(verb: str, pool: str) -> str:
    """A job event's subject, relative to `<ns>.v1` (as the outbox stores it)."""
    return f"jobs.{verb}.{pool}"


def runner_cancel(runner_id: str) -> str:
    """A runner's cancel subject, relative to `<ns>.v1`."""
    return f"runners.{runner_id}.cancel"


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

    def absolute(self, relative: str) -> str:
        """`jobs.finished.default` -> `<ns>.v1.jobs.finished.default`."""
        return f"{self.root}.{relative}"

    def job_event(self, verb: str, pool: str) -> str:
        """News for producers: admitted, rejected, assigned, started, finished, ..."""
        return self.absolute(job_news(verb, pool))

    def job_events(self, verb: str = "*") -> str:
        return self.absolute(job_news(verb, "*"))

    @property
    def job_events_stream(self) -> str:
        """The JetStream stream of every job event (the outbox relay writes it)."""
        return f"{self.namespace.upper()}_JOB_EVENTS"

    def job_log(self, job_id: object = "*") -> str:
        """A job's output, chunk by chunk (see orchestrator/bus/job_logs.py)."""
        return f"{self.root}.logs.{job_id}"

    @property
    def job_logs_stream(self) -> str:
        return f"{self.namespace.upper()}_JOB_LOGS"

    def cancel(self, runner_id: str) -> str:
        return self.absolute(runner_cancel(runner_id))

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

    def jobs_queued(self, pool: str = "*") -> str:
        return f"{self.root}.wakes.queued.{pool}"

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
