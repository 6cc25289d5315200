"""The other end of bench/hops.py's NATS request: answers every request on a subject at once.

    python -m bench.echo SUBJECT

Connects as the services do (`ORCH_NATS_URL` and the `ORCH_NATS_*` credentials, from the
environment), prints `ready` once subscribed, then answers until killed; on the services' event
loop (app/main_loop.py), so its hop costs what theirs does.
"""

from __future__ import annotations

import asyncio
import sys

from nats.aio.msg import Msg

from app.main_loop import run
from orchestrator.bus import Bus
from orchestrator.settings import Settings


async def main(subject: str) -> None:
    bus = Bus.from_settings(Settings(), name="bench-echo")
    await bus.connect()

    async def answer(msg: Msg) -> None:
        await msg.respond(b"")

    await bus.nc.subscribe(subject, cb=answer)
    await bus.nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    run(main(sys.argv[1]))
