"""The other end of bench/hops.py's NATS request: answers every request on a subject at once.

    python -m bench.echo NATS_URL SUBJECT

Prints `ready` once subscribed, then answers until killed; on the services' event loop
(app/main_loop.py), so its hop costs what theirs does.
"""

from __future__ import annotations

import asyncio
import sys

import nats
from nats.aio.msg import Msg

from app.main_loop import run


async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url)

    async def answer(msg: Msg) -> None:
        await msg.respond(b"")

    await nc.subscribe(subject, cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    run(main(sys.argv[1], sys.argv[2]))
