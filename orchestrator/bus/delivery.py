"""One message of the JetStream intake as a service sees it: its bytes, headers and place in the
stream, and what the service decides of it (ack, nak, term). nats-py stays inside the bus."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nats.aio.msg import Msg


@dataclass(frozen=True)
class Delivery:
    data: bytes
    headers: Mapping[str, str]
    subject: str
    stream: str
    stream_seq: int
    timestamp: datetime | None  # when the stream stored it
    _msg: Msg = field(repr=False, compare=False)

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        meta = msg.metadata
        return cls(msg.data, msg.headers or {}, msg.subject, meta.stream, meta.sequence.stream, meta.timestamp, msg)

    async def ack(self) -> None:
        """Done with it: the stream forgets it (a work queue)."""
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Not now: delivered again after `delay` seconds."""
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        """Never: it is not delivered again (bad input, recorded as refused)."""
        await self._msg.term()
