"""Subject and stream names: `<namespace>.v1.<noun>.<verb>[.<pool>]`, each topic with its model.

The namespace defaults to `orch` (the public contract); tests and co-hosted deployments give
each their own so they never hear one another. Every topic is declared here once, relative to
the namespace (`Subjects.assign` is `runners.*.assign`); an instance binds them all to its
namespace (`Subjects("orch").assign` is `orch.v1.runners.*.assign`). See topics.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.bus.topics import JobNews, RequestTopic, Topic
from schemas.events import (
    AdmissionResult,
    CapacityUnknown,
    HeartbeatReply,
    JobAdmitted,
    JobAssigned,
    JobCancelRequested,
    JobExpired,
    JobFinished,
    JobRejected,
    JobRequeued,
    JobsQueued,
    JobStarted,
    JobSubmitted,
    LeaderElected,
    LeaderLost,
    PoolLeaderChanged,
    PoolUpdated,
    Reply,
    RunnerDraining,
    RunnerHeartbeat,
    RunnerRegistered,
    RunnerStopped,
    RunnerTaintsChanged,
    SchedulesChanged,
    SlotAvailable,
)


@dataclass(frozen=True)
class Subjects:
    namespace: str = "orch"

    # Intake: JetStream (durable, deduplicated by Nats-Msg-Id) and core request/reply.
    submit = Topic("jobs.submit", JobSubmitted)
    submit_request = RequestTopic("jobs.submit.req", JobSubmitted, AdmissionResult)

    # News for producers, by pool (the outbox relays them; the SQL composes `jobs.<verb>.<pool>`).
    # One topic per verb, not `jobs.*.*`: the stream must not capture `jobs.submit` (the intake's)
    # nor `jobs.submit.req` (a request JetStream would answer).
    job_admitted = JobNews("jobs.admitted.*", JobAdmitted)
    job_rejected = JobNews("jobs.rejected.*", JobRejected)
    job_assigned = JobNews("jobs.assigned.*", JobAssigned)
    job_started = JobNews("jobs.started.*", JobStarted)
    job_requeued = JobNews("jobs.requeued.*", JobRequeued)
    job_finished = JobNews("jobs.finished.*", JobFinished)
    job_expired = JobNews("jobs.expired.*", JobExpired)

    # A runner's own: hand-offs to it, and cancel notices (from the outbox, best effort).
    assign = RequestTopic("runners.*.assign", JobAssigned, Reply)
    cancel = Topic("runners.*.cancel", JobCancelRequested)
    # A runner's requests to capacity.
    runner_register = RequestTopic("runners.register", RunnerRegistered, HeartbeatReply)
    runner_heartbeat = RequestTopic("runners.heartbeat", RunnerHeartbeat, HeartbeatReply)
    runner_start = RequestTopic("runners.start", JobStarted, Reply)
    runner_finish = RequestTopic("runners.finish", JobFinished, Reply)
    runner_drain = RequestTopic("runners.drain", RunnerDraining, Reply)
    runner_stopped = RequestTopic("runners.stopped", RunnerStopped, Reply)
    runner_taints_changed = Topic("runners.taints", RunnerTaintsChanged)

    # Wakes and news by pool, on core NATS.
    jobs_queued = Topic("wakes.queued.*", JobsQueued)
    slot_available = Topic("slots.available.*", SlotAvailable)
    capacity_unknown = Topic("capacity.unknown.*", CapacityUnknown)
    pool_updated = Topic("pools.updated.*", PoolUpdated)
    pool_leader_changed = Topic("pools.leader.*", PoolLeaderChanged)  # a leader-mode pool's runner (seed 002)

    schedules_changed = Topic("schedules.changed", SchedulesChanged)  # a wake for the scheduler
    # The dispatch leader's news, by shard.
    leader_elected = Topic("leader.elected.*", LeaderElected)
    leader_lost = Topic("leader.lost.*", LeaderLost)

    def __post_init__(self) -> None:
        for name, topic in self.declared().items():
            object.__setattr__(self, name, topic.under(self.root))

    @classmethod
    def declared(cls) -> dict[str, Topic[Any]]:
        """Every topic, as declared (relative to the namespace)."""
        return {name: value for name, value in vars(cls).items() if isinstance(value, Topic)}

    def topics(self) -> dict[str, Topic[Any]]:
        """Every topic, in this namespace."""
        return {name: getattr(self, name) for name in self.declared()}

    @property
    def job_events(self) -> list[JobNews[Any]]:
        """What the job-events stream captures: every verb's news."""
        return [topic for topic in self.topics().values() if isinstance(topic, JobNews)]

    @property
    def root(self) -> str:
        return f"{self.namespace}.v1"

    def absolute(self, relative: str) -> str:
        """`jobs.finished.default` -> `<ns>.v1.jobs.finished.default` (an outbox row's subject)."""
        return f"{self.root}.{relative}"

    @property
    def intake_stream(self) -> str:
        return f"{self.namespace.upper()}_INTAKE"

    @property
    def job_events_stream(self) -> str:
        """The JetStream stream of every job event (the outbox relay writes it)."""
        return f"{self.namespace.upper()}_JOB_EVENTS"

    def job_log(self, job_id: object = "*") -> str:
        """A job's output, chunk by chunk: raw bytes, not events (see orchestrator/bus/job_logs.py)."""
        return f"{self.root}.logs.{job_id}"

    @property
    def job_logs_stream(self) -> str:
        return f"{self.namespace.upper()}_JOB_LOGS"

    # Leader election: the lease bucket (one key per dispatch shard).
    @property
    def lease_bucket(self) -> str:
        return f"{self.namespace}_leases"
