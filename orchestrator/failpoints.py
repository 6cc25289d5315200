"""Failpoints: named fault hooks in the gaps between two writes (etcd's gofail, TiKV's fail-rs).

Code marks a gap with `failpoint("outbox.relay.published")`; a test enables it, in this process
(`enable`) or in a child through the environment (`ORCH_FAILPOINTS="name=action;..."`), with an
action: `exit` ends the process at once, without cleanup, as kill -9 would (status 86); `raise`
raises `FailpointHit`. `N*action` fires N times, then the failpoint is off again.

Off in production and free: with none enabled, a failpoint is one test of an empty dict.
"""

from __future__ import annotations

import os

EXIT_STATUS = 86
_ACTIONS = ("exit", "raise")
_enabled: dict[str, tuple[str, int | None]] = {}


class FailpointHit(Exception):
    """A failpoint enabled with `raise` fired."""


def enable(name: str, action: str, times: int | None = None) -> None:
    if action not in _ACTIONS:
        raise ValueError(f"failpoint {name}: action {action!r} is not one of {_ACTIONS}")
    _enabled[name] = (action, times)


def disable(name: str) -> None:
    _enabled.pop(name, None)


def parse(spec: str) -> dict[str, tuple[str, int | None]]:
    """`name=action;name=N*action` -> {name: (action, times)}."""
    found: dict[str, tuple[str, int | None]] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, action = item.partition("=")
        if not sep or not name:
            raise ValueError(f"ORCH_FAILPOINTS: {item!r} is not name=action")
        times: int | None = None
        if "*" in action:
            count, action = action.split("*", 1)
            times = int(count)
        if action not in _ACTIONS:
            raise ValueError(f"ORCH_FAILPOINTS: {name}: action {action!r} is not one of {_ACTIONS}")
        found[name] = (action, times)
    return found


def failpoint(name: str) -> None:
    if _enabled:
        _fire(name)


def _fire(name: str) -> None:
    spec = _enabled.get(name)
    if spec is None:
        return
    action, times = spec
    if times is not None:
        if times <= 1:
            del _enabled[name]
        else:
            _enabled[name] = (action, times - 1)
    if action == "exit":
        os._exit(EXIT_STATUS)
    raise FailpointHit(name)


_enabled.update(parse(os.environ.get("ORCH_FAILPOINTS", "")))
