"""How each resource the HTTP commands (app/http_commands.py) show looks to people: its table's
columns and a row per item (jobs, pools, schedules, runners, the pools under `status`), and the
lines `runners` and `status` print around their tables."""

from __future__ import annotations

from app import tables
from schemas.api import JobListed, LeaderView, PoolStats, RunnerCount, RunnerList, RunnerView
from schemas.pools import PoolView
from schemas.rate_limits import RateLimitView
from schemas.schedules import ScheduleView

JOB_COLUMNS = ("id", "state", "pool", "age", "attempt", "exit", "command", "why")


def job_row(j: JobListed) -> tuple[object, ...]:
    command = tables.command_line(j.payload.get("command"))
    why = j.blocked_by.message if j.blocked_by else j.reason
    state = f"{j.state} (cancelling)" if j.cancel_requested_at and not j.state.final else j.state
    return j.id, state, j.pool, tables.age(j.created_at), j.attempt, j.exit_code, command, why


POOL_COLUMNS = ("name", "labels", "max concurrent", "max active", "mode", "paused", "leader", "provisioner", "shard")


def pool_row(p: PoolView) -> tuple[object, ...]:
    return (
        p.name,
        tables.words(p.labels),
        tables.cap(p.max_concurrent),
        tables.cap(p.max_active),
        p.mode,
        "yes" if p.paused else "no",
        p.leader_runner_id,
        p.provisioner,
        p.dispatch_shard,
    )


SCHEDULE_COLUMNS = ("name", "cron", "timezone", "next fire", "last fire", "last job", "overlap", "catch up", "command")


def schedule_row(s: ScheduleView) -> tuple[object, ...]:
    last = f"{s.last_job.id} ({s.last_job.state or 'gone'})" if s.last_job else s.last_skip_reason
    next_fire = "paused" if s.paused else tables.when(s.next_fire_at)
    command = tables.command_line(s.job.payload.get("command"), 30)
    return s.name, s.cron, s.timezone, next_fire, tables.when(s.last_fire_at), last, s.overlap, s.catch_up, command


RATE_LIMIT_COLUMNS = ("key", "limit", "period", "burst", "starts left", "next start")


def rate_limit_row(r: RateLimitView) -> tuple[object, ...]:
    next_start = "now" if r.next_start_at is None else tables.when(r.next_start_at)
    return r.key, r.limit, f"{r.period_s:g}s", r.burst, r.starts_left, next_start


RUNNER_COLUMNS = ("id", "pool", "state", "busy", "labels", "taints", "last seen")


def runner_row(r: RunnerView) -> tuple[object, ...]:
    busy = f"{r.busy if r.busy is not None else '?'}/{r.slots}"
    return r.id, r.pool, r.state, busy, tables.words(r.labels), tables.words(r.taints), tables.age(r.last_seen_at)


def more_runners(page: RunnerList) -> str | None:
    if page.next is None:
        return None
    return f"(the first {len(page.runners)} runners: GET /v1/runners?after={page.next} lists the next page)"


def dispatchers(leader: LeaderView) -> str:
    """Who dispatches: the one lease's holder, or each shard's."""
    if len(leader.shards) <= 1:
        lease = leader.lease
        return f"dispatcher {lease.holder}" if lease else "no dispatcher holds the lease: nothing is dispatched"
    held = [f"{s.shard} {s.lease.holder if s.lease else '(vacant: not dispatched)'}" for s in leader.shards]
    return "dispatchers by shard: " + ", ".join(held)


STATUS_POOL_COLUMNS = ("pool", "in flight", "queued", "oldest wait", "free slots", "runners", "note")


def status_row(p: PoolStats, counts: list[RunnerCount]) -> tuple[object, ...]:
    by_state = [f"{c.runners} {c.state}" for c in counts if c.pool == p.pool and c.state != "lost"]
    return (
        p.pool,
        f"{p.in_flight}/{tables.cap(p.max_concurrent)}",
        p.queued,
        tables.duration(p.oldest_queued_s) if p.queued else None,
        p.free,
        ", ".join(by_state) or "none",
        "paused" if p.paused else None,
    )
