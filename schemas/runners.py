"""Operator bodies about runners."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Body
from schemas.jobs import Label


class RunnerTaints(Body):
    """The body of `PUT /v1/runners/{id}/taints`: the runner's taints, the exact set. A tainted
    runner is never a pool's leader and takes only jobs that tolerate every one of its taints."""

    taints: list[Label] = Field(max_length=64)
