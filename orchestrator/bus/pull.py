"""A JetStream pull consumer read by pull requests that each have a reply subject of their own.

nats-py's `fetch` sends every pull request to one inbox. A request the client gave up on (its
timeout passed first: a server slow for a moment) still ends later on the server, and its end
(a 404 or 408 status) then reaches whichever fetch is waiting, which takes it for the end of its
own request: it asks again and leaves its first request open on the server. The next job goes to
that orphan, and the fetch after it waits for its own request's next job before returning both:
after an idle spell every other job waited for the next one (50 ms at 20 jobs/s), or for the
whole timeout when none came.

Here a status ends only the request it names (its subject is the request's reply subject), and
a job ends any wait, whichever request brought it: the server delivers a job to one request only,
and a fetch that holds one returns it at once. A request an earlier fetch left open costs
nothing: what it brings goes to the next fetch, and it ends by itself, after its first jobs or at
its expiry (the server also forgets it when this client is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from itertools import count

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orchestrator.bus.delivery import Delivery
from orchestrator.errors import BusUnavailable

_STATUS = "Status"
# The ends of a pull request after which another may be asked: nothing (more) to deliver, it
# expired (or the server had requests enough waiting), or a conflict that passes (the consumer's
# leader changed or its server stops; the consumer deleted: the next request hears a 503). Any
# other status fails the fetch: a 503 (no one answers for the consumer) or a 409 that asking
# again would only repeat (a limit of the consumer's).
_ENDED = {"404", "408"}
_PASSING_CONFLICTS = ("Leadership Change", "Server Shutdown", "Consumer Deleted")
# A request that ended without a job is asked again after this long, not at once: a server that
# ends requests at once (requests enough waiting) is not asked in a loop.
_AGAIN_S = 0.02
# A request expiring within this long is not worth sending.
_SHORTEST_S = 0.001


class Pull:
    """Fetches from the pull consumer whose next-message subject is `next_subject`."""

    def __init__(self, nc: Client, next_subject: str) -> None:
        self._nc = nc
        self._next_subject = next_subject
        self._inbox = nc.new_inbox()
        # What the requests brought and no fetch took yet: at most their batches.
        self._arrived: deque[Msg] = deque()
        self._came = asyncio.Event()
        self._numbers = count()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._arrive)

    async def unsubscribe(self) -> None:
        """What was delivered and not fetched comes again after the consumer's ack wait."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _arrive(self, msg: Msg) -> None:
        self._arrived.append(msg)
        self._came.set()

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to `batch` messages as soon as there are any; [] when none came within `timeout`.
        Raises BusUnavailable when the server refuses the request: no one answers for the
        consumer (deleted, or between leaders), or a limit of the consumer's."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        msgs: list[Msg] = []
        asking: str | None = None  # the reply subject of this fetch's request, while it is open
        again_at = 0.0  # when another may be asked, after one ended without a job
        refused: str | None = None  # why the server refused this fetch's request
        while True:
            self._came.clear()  # set again by what comes next
            while self._arrived and len(msgs) < batch:  # what came, for this request or an earlier one
                msg = self._arrived.popleft()
                if _status(msg) is None:
                    msgs.append(msg)
                elif msg.subject == asking:
                    asking, again_at = None, loop.time() + _AGAIN_S
                    refused = None if _ended(msg) else _refusal(msg)
                # else: the end of a request given up on, or of one that brought jobs
            if msgs:
                return [Delivery.of(m) for m in msgs]
            if refused:
                raise BusUnavailable(f"the intake refused a fetch: {refused}")
            now = loop.time()
            if deadline - now < _SHORTEST_S:
                return []
            if asking is None and now >= again_at:
                asking = await self._ask(batch, deadline - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline if asking else min(deadline, again_at)):
                    await self._came.wait()

    async def _ask(self, batch: int, expires_s: float) -> str:
        """A request that waits up to `expires_s` for a first message, then takes what is there
        up to `batch` and ends (no_wait with expires: a 404 after the last one). Returns its
        reply subject."""
        reply = f"{self._inbox}.{next(self._numbers)}"
        request = {"batch": batch, "expires": int(expires_s * 1e9), "no_wait": True}
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=reply)
        except Exception as exc:  # closed, or its buffer full while reconnecting
            raise BusUnavailable(f"cannot fetch from the intake: {exc}") from exc
        return reply


def _status(msg: Msg) -> str | None:
    """A status from the server (`404`, `408`, `409`, ...), or None for a message of the stream."""
    return msg.headers.get(_STATUS) if msg.headers else None


def _ended(msg: Msg) -> bool:
    status = _status(msg)
    return status in _ENDED or (status == "409" and _description(msg).startswith(_PASSING_CONFLICTS))


def _description(msg: Msg) -> str:
    lines = ((msg.headers or {}).get("Description") or "").strip().splitlines()
    return lines[0] if lines else ""


def _refusal(msg: Msg) -> str:
    status = _status(msg)
    if status == "503":
        return "no one answers for the consumer (503: deleted, or between leaders)"
    return f"{status} {_description(msg)}".rstrip()
