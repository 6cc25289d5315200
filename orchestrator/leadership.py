"""Leadership: what one process knows about its own terms as dispatch shards' leader.

One `Leadership` per shard, gathered in `Leaderships` (every shard the process contends for).
The leader service (which holds the leases) writes them; the leader-only services (the
dispatcher, the provisioner) read them. They are the only thing those share, so none imports
another. A term is valid until its deadline on this process's monotonic clock: the holder stops
dispatching on its own once no renewal has succeeded within the lease TTL, even if the renewing
task is stuck, and the epoch it claims with is checked in Postgres for the case where it does
not notice in time (paused, partitioned).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.shards import shard_names
from orchestrator.store import Fence

if TYPE_CHECKING:
    from orchestrator.lifecycle import Service

Listener = Callable[[Fence | None], None]


class Leadership:
    def __init__(self, shard: str, holder: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.shard = shard
        self.holder = holder
        self._clock = clock
        self._epoch: int | None = None
        self._deadline = 0.0
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()

    def fence(self) -> Fence | None:
        """The term to claim under, or None when this process must not dispatch."""
        if self._epoch is None or self._clock() >= self._deadline:
            return None
        return Fence(self.shard, self._epoch, self.holder)

    @property
    def leading(self) -> bool:
        return self.fence() is not None

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def on_change(self, listener: Listener) -> None:
        """`listener(fence)` on every gain (a fence) and loss (None)."""
        self._listeners.append(listener)

    def gain(self, epoch: int, deadline: float) -> None:
        self._epoch, self._deadline = epoch, deadline
        self._notify()

    def extend(self, deadline: float) -> None:
        self._deadline = max(self._deadline, deadline)

    def deposed(self, epoch: int) -> None:
        """A claim under `epoch` was fenced: Postgres holds a newer term, yet this process holds
        the lease (its epoch was issued late). The term ends now; the leader service gives the
        lease up, so a new term can begin instead of a shard that nobody dispatches."""
        if self._epoch == epoch:
            self.lose()

    def lose(self) -> None:
        if self._epoch is None:
            return
        self._epoch, self._deadline = None, 0.0
        self._notify()

    def _notify(self) -> None:
        fence = self.fence()
        for listener in list(self._listeners):
            listener(fence)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, leading: bool = True, timeout: float | None = None) -> None:
        """Wait until this process leads (or, with `leading=False`, does not)."""
        async with asyncio.timeout(timeout):
            while self.leading != leading:
                changed = self._changed
                if leading or self._epoch is None:
                    await changed.wait()
                else:  # a term can also end by its deadline passing, with no event
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), max(self._deadline - self._clock(), 0.001))


class Leaderships:
    """This process's terms, one per dispatch shard (`shard_names(count)`); its leader service
    contends for each."""

    def __init__(self, count: int, holder: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.holder = holder
        self._by_shard = {shard: Leadership(shard, holder, clock=clock) for shard in shard_names(count)}

    def __iter__(self) -> Iterator[Leadership]:
        return iter(self._by_shard.values())

    def __getitem__(self, shard: str) -> Leadership:
        return self._by_shard[shard]

    def get(self, shard: str) -> Leadership | None:
        return self._by_shard.get(shard)

    @property
    def shards(self) -> list[str]:
        return list(self._by_shard)

    @property
    def first(self) -> Leadership:
        """Shard 0's ("all" when it is the only one). Leader-only work that is not per pool (the
        provisioner, requeueing what no runner started) follows this one alone, so it keeps
        exactly one runner however many shards there are."""
        return next(iter(self._by_shard.values()))

    def leading(self) -> list[str]:
        """The shards this process leads now."""
        return [shard for shard, leadership in self._by_shard.items() if leadership.leading]


def leads(leadership: Leadership | None) -> bool:
    """Whether a leader-only service may act now: this process holds the lease, or the service
    runs without election (None)."""
    return leadership is None or leadership.leading


def sweep_on_gain(
    leadership: Leadership | None, service: Service, sweep: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Have `service` run `sweep` each time this process gains the lease: what the previous
    leader left undone is its own now."""
    if leadership is None:
        return

    def changed(fence: Fence | None) -> None:
        if fence is not None and service.running:
            service.spawn(sweep(), "sweep.gained")

    leadership.on_change(changed)
