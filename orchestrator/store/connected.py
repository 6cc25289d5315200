"""What the store's table modules share: a connection from the pool, or one inside a transaction."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any


class Connected:
    """The base of each table's queries (`jobs.py`, `pools.py` ...); `Store` provides the pool."""

    def connection(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError
