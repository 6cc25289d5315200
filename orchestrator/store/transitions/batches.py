"""Transactions that make more than one decision under their locks: an admission batch and a
pool change."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.lru import Lru
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job
from orchestrator.store.transitions import news
from orchestrator.store.transitions.args import _NEW_JOB_FIELDS, _REJECTION_FIELDS, KeyLive, NewJob, Rejection

# --- transactions that make more than one decision ----------------------------------------------


ShapeKey = tuple[str, tuple[str, ...], str, tuple[str, ...], str, str]
# What a remembered shape id holds for: one incarnation of its pool (`created_at`: a pool deleted
# and created again gets new shapes) and one generation of its shapes (`shape_generation`, bumped
# by the pruner whenever it deletes some of them). Shapes never change otherwise.
ShapesVersion = tuple[datetime, int]


def shapes_version(pool: Mapping[str, Any]) -> ShapesVersion:
    return pool["created_at"], pool["shape_generation"]


class ShapeIds:
    """The shape ids this process looked up, each for the version of its pool's shapes it was
    found in. Admission reads the pool row (so its version) under the pool's admission lock,
    which the pruner holds to delete shapes: an id remembered for the version read is there; ids
    of an older version are never read again and age out. At most `max_size` (least recently used
    first out): a producer chooses shapes (a tenant is any name), and a miss costs one lookup."""

    def __init__(self, max_size: int) -> None:
        self._ids: Lru[tuple[ShapesVersion, ShapeKey], int] = Lru(max_size)

    def get(self, version: ShapesVersion, key: ShapeKey) -> int | None:
        return self._ids.get((version, key))

    def remember(self, found: Mapping[tuple[ShapesVersion, ShapeKey], int]) -> None:
        """Ids found by a transaction that committed (under the versions it read)."""
        self._ids.update(found.items())


def shape_key(
    pool: str,
    labels: Sequence[str],
    tenant: str | None,
    tolerations: Sequence[str] = (),
    concurrency_key: str | None = None,
    rate_limit_key: str | None = None,
) -> ShapeKey:
    """What a job needs, as its shape: pool, sorted distinct labels, tenant ('' for none), the
    sorted distinct taints it tolerates, and the keys it is under ('' for none): its lane."""
    lane = (concurrency_key or "", rate_limit_key or "")
    return (pool, tuple(sorted(set(labels))), tenant or "", tuple(sorted(set(tolerations))), *lane)


def _storable(value: Any) -> Any:
    """Postgres text cannot hold NUL; a rejected message may well contain one."""
    return value.replace("\x00", "\\u0000") if isinstance(value, str) else value


class AdmissionTx:
    """What an admission decision reads and writes, inside the batch's transaction."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        pools: dict[str, dict[str, Any]],
        existing: dict[str, Any],
        shapes: ShapeIds,
    ) -> None:
        self._conn = conn
        self.pools = pools
        self.existing = existing
        self._shapes = shapes
        # Looked up in this transaction: remembered once it commits.
        self.new_shapes: dict[tuple[ShapesVersion, ShapeKey], int] = {}
        self.shapes_created = 0  # of those, the ones it created
        self.inserted: list[dict[str, Any]] = []  # the jobs admitted: logged once it commits
        self.cancelled: list[Job] = []  # jobs a new one of their key replaced: logged once it commits

    async def active(self, pools: Sequence[str]) -> dict[str, int]:
        """Queued + assigned + running per pool (exact: the pools are locked)."""
        if not pools:  # no pool of the batch has a max_active: nothing to count
            return {}
        rows = await self._conn.fetch(Q["pool_active_many"], list(pools))
        return {name: 0 for name in pools} | {r["pool"]: r["active"] for r in rows}

    async def drained_last_minute(self, pool: str, now: datetime | None = None) -> int:
        return int(await self._conn.fetchval(Q["pool_drained_last_minute"], pool, now))

    async def insert(self, jobs: Sequence[NewJob]) -> list[dict[str, Any]]:
        """Admit `jobs` in one statement, with their `admitted` events; returns the rows inserted
        (a key taken meanwhile is skipped)."""
        if not jobs:
            return []
        columns = [[getattr(job, name) for job in jobs] for name in _NEW_JOB_FIELDS]
        for ragged in ("labels", "tolerations"):  # see job_insert_many
            columns[_NEW_JOB_FIELDS.index(ragged)] = [json.dumps(getattr(job, ragged)) for job in jobs]
        columns.append([await self.shape_id(job) for job in jobs])
        by_key = {job.key: job for job in jobs}
        rows = [dict(r) for r in await self._conn.fetch(Q["job_insert_many"], *columns)]
        for row in rows:  # the job rows in full, without decoding back what was just encoded
            job = by_key[row["key"]]
            row.update(spec=job.spec, payload=job.payload, trace_context=job.trace_context)
        self.inserted += rows
        return rows

    async def shape_id(self, job: NewJob) -> int:
        key = shape_key(job.pool, job.labels, job.tenant, job.tolerations, job.concurrency_key, job.rate_limit_key)
        version = shapes_version(self.pools[job.pool])
        shape_id = self._shapes.get(version, key) or self.new_shapes.get((version, key))
        if shape_id is None:
            # In this transaction: the pool's admission lock already serializes its shape creation
            # (and keeps the pruner from deleting the shape before the job is in).
            args = (key[0], list(key[1]), key[2], list(key[3]), key[4], key[5])
            created = await self._conn.fetchval(Q["job_shape_insert"], *args)
            shape_id = created or await self._conn.fetchval(Q["job_shape_get"], *args)
            self.new_shapes[(version, key)] = shape_id
            self.shapes_created += created is not None
        return shape_id

    async def rate_limits_known(self, keys: Sequence[str]) -> set[str]:
        """Which of these rate-limit keys exist."""
        return {r["key"] for r in await self._conn.fetch(Q["rate_limit_known"], list(keys))}

    async def concurrency_keys(self, keys: Sequence[str], members_of: Sequence[str] = ()) -> dict[str, KeyLive]:
        """Take the locks of `keys` (held to the commit: the claim takes them too, so what this
        reads stays true until then), then read each key's live jobs: how many are queued and how
        many assigned or running, their smallest limit, and for `members_of` which jobs they are."""
        await self._conn.execute(Q["concurrency_keys_lock"], list(keys))
        # A statement of its own, after the locks: its snapshot has every claim of the keys committed.
        counts = await self._conn.fetch(Q["concurrency_key_counts"], list(keys))
        members: dict[str, list[tuple[UUID, str]]] = {key: [] for key in keys}
        if members_of:
            for r in await self._conn.fetch(Q["concurrency_key_members"], list(members_of)):
                members[r["concurrency_key"]].append((r["id"], r["state"]))
        return {
            r["key"]: KeyLive(r["key"], r["queued"], r["held"], r["lowest_limit"], tuple(members[r["key"]]))
            for r in counts
        }

    async def cancel(self, superseded: Sequence[tuple[UUID, str]], stopped: Sequence[UUID]) -> list[Job]:
        """The cancel edges, for jobs a new job of their key replaces (`on_conflict`): those not
        started (queued, assigned) end now with their reason; the runners of those running are
        told to stop (they end when their runner reports)."""
        ended: list[Job] = []
        if superseded:
            ended += await news.apply(self._conn, "job_cancel_unstarted", news.columns(superseded, 2))
        if stopped:
            ended += await news.apply(self._conn, "job_cancel_request", (sorted(stopped),))
        self.cancelled += ended
        return ended

    async def jobs_by_key(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {r["key"]: dict(r) for r in await self._conn.fetch(Q["job_list_by_keys"], list(keys))}

    async def record(self, rejections: Sequence[Rejection]) -> None:
        """Keep the JetStream door's refusals, and their `rejected` news, with the batch."""
        if rejections:
            columns = [[_storable(getattr(r, name)) for r in rejections] for name in _REJECTION_FIELDS]
            await self._conn.execute(Q["rejection_insert_many"], *columns)
            await news.write(
                self._conn, [news.rejected(r.key, r.pool, r.reason, r.message, r.field) for r in rejections]
            )


class PoolChangeTx:
    """What a pool change reads and writes, inside its transaction."""

    def __init__(self, conn: asyncpg.Connection, name: str, current: dict[str, Any] | None) -> None:
        self._conn = conn
        self.name = name
        self.current = current
        self.failed: list[Job] = []  # queued jobs the change failed: logged once it commits

    async def upsert(self, config: dict[str, Any]) -> dict[str, Any]:
        row = await self._conn.fetchrow(
            Q["pool_upsert"],
            self.name,
            config["max_concurrent"],
            config["max_active"],
            list(config["labels"]),
            list(config["allowed_plans"]),
            config["mode"],
            config["paused"],
            config["provisioner"],
            config["max_workers"],
            config["reservation_timeout_s"],
            config["shard"],
            config["max_starts_per_s"],
        )
        return dict(row)

    async def dispatch_shards(self) -> int:
        """How many dispatch shards there are: what an explicit `shard` must be below."""
        return int(await self._conn.fetchval(Q["dispatch_shards_get"]))

    async def record_file_config(self, config: dict[str, Any]) -> None:
        await self._conn.execute(Q["pool_set_file_config"], self.name, config)

    async def queued_shapes(self) -> list[tuple[list[str], str | None]]:
        return [(list(r["labels"]), r["plan"]) for r in await self._conn.fetch(Q["job_queued_shapes"], self.name)]

    async def fail_unsatisfiable(self, labels: Sequence[str], plan: str | None, reason: str) -> list[Job]:
        """Edge queued -> failed: the change made these queued jobs unrunnable."""
        args = (self.name, list(labels), plan, reason)
        failed = await news.apply(self._conn, "job_fail_queued_shape", args)
        self.failed += failed
        return failed
