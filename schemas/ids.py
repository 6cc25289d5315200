"""Time-ordered identifiers (UUIDv7, RFC 9562).

Job ids sort by creation time, so FIFO within a priority is an index order on the id alone.
Python gains `uuid.uuid7` only in 3.14; this is the RFC's layout with a monotonic counter in
`rand_a` so ids made in the same millisecond by one process still sort in creation order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, int.from_bytes(os.urandom(2), "big") & 0x1FF
        else:
            # Same millisecond (or the clock stepped back): keep ordering by counting on.
            ms, _counter = _last_ms, _counter + 1
            if _counter > 0xFFF:
                _last_ms = ms = ms + 1
                _counter = 0
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
