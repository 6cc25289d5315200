"""The runner registry outside the job transitions: suspect, taints, drain, and reads
(`queries/runners.sql`, `operator.sql`)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q
from orchestrator.store.rows import Runner


class RunnerRows(Connected):
    async def runner_mark_suspect(self, runner_id: str) -> None:
        async with self.connection() as conn:
            await conn.execute(Q["runner_mark_suspect"], runner_id)

    async def runner_set_taints(self, runner_id: str, taints: Sequence[str]) -> Runner | None:
        """Set the runner's taints (the exact set); its row, or None if it is unknown."""
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["runner_set_taints"], runner_id, list(taints))
        return Runner.from_record(row) if row else None

    async def runners_known(self, runner_ids: Sequence[str]) -> set[str]:
        """Which of `runner_ids` have registered."""
        async with self.connection() as conn:
            return {r["id"] for r in await conn.fetch(Q["runner_list_known"], list(runner_ids))}

    async def runner_list(self, *, after: str | None = None, limit: int | None = None) -> list[Runner]:
        """Runners in id order, those after id `after`, at most `limit` (None: all)."""
        async with self.connection() as conn:
            return [Runner.from_record(r) for r in await conn.fetch(Q["runner_list"], after, limit)]

    async def runner_get(self, runner_id: str) -> Runner | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["runner_get"], runner_id)
        return Runner.from_record(row) if row else None

    async def runner_drain(self, runner_id: str) -> Runner | None:
        """The runner takes nothing more (an operator's drain, a runner stopping, a one-shot worker
        that took its job); its row, or None if it is unknown or lost."""
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["runner_drain"], runner_id)
        return Runner.from_record(row) if row else None
