"""Every timestamp in every answer of the API is ISO 8601 in UTC with `Z`
(`2026-11-28T17:25:04.345814Z`), whichever endpoint writes it: `/v1/rejections` wrote
`2026-11-28 17:25:04+00:00` and `/v1/leader` `...+00:00` while the rest wrote `Z`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import aiohttp

from app.runtime import Runtime
from orchestrator.bus import Bus
from tests.support import call, eventually

LOOKS_LIKE_A_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
# The timestamp fields the answers below hold: each must be seen, so the test cannot pass on none.
FIELDS = {"created_at", "assigned_at", "started_at", "finished_at", "updated_at", "last_seen_at", "since", "at"}


def timestamps(value: Any, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, field, value) of every string in `value` that looks like a date and time."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and LOOKS_LIKE_A_TIME.match(item):
                yield f"{where}.{key}", key, item
            else:
                yield from timestamps(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from timestamps(item, f"{where}[{i}]")


async def test_every_answer_writes_its_timestamps_in_iso_8601_utc_with_z(
    system: Runtime, system_http: aiohttp.ClientSession, bus: Bus
) -> None:
    http = system_http
    runner_id = system.services["runner"].runner_id  # type: ignore[attr-defined]
    answers: dict[str, Any] = {}

    async def ask(method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        got, answer = await call(http, method, path, **kwargs)
        assert got == status, (method, path, answer)
        answers[f"{method} {path}"] = answer
        return answer

    # A job that ran (every transition's time set), and a reservation taken and finished.
    ran = await ask("POST", "/v1/jobs", 201, json={"pool": "default", "payload": {"command": ["true"]}})

    async def ended() -> Any:
        job = await ask("GET", f"/v1/jobs/{ran['id']}")
        return job if job["finished_at"] else None

    await eventually(ended, what="the job to finish")
    held = await ask("POST", "/v1/jobs", 201, json={"pool": "default"})
    await ask("POST", f"/v1/jobs/{held['id']}/take", params={"token": held["token"], "wait": "10"})
    await ask("POST", f"/v1/jobs/{held['id']}/finish", params={"token": held["token"]}, json={"exit_code": 0})
    # A paused pool, a job waiting in it (`blocked_by`), cancelled.
    await ask("PUT", "/v1/pools/held", 201, json={"paused": True})
    await ask("PATCH", "/v1/pools/held", json={"max_active": 10})
    waiting = await ask("POST", "/v1/jobs", 201, json={"pool": "held"})
    await ask("GET", f"/v1/jobs/{waiting['id']}")
    await ask("DELETE", f"/v1/jobs/{waiting['id']}")
    # What the JetStream door refused.
    await bus.submit(b"{not json", key="unreadable")

    async def refused() -> Any:
        return (await ask("GET", "/v1/rejections"))["rejections"]

    await eventually(refused, what="the refusal to be recorded")

    async def led() -> Any:
        return (await ask("GET", "/v1/leader"))["since"]

    await eventually(led, what="a dispatch term to be recorded")
    for path in ("/v1/jobs", "/v1/pools", "/v1/pools/default", "/v1/runners", "/v1/stats", "/v1/queue"):
        await ask("GET", path)
    await ask("PUT", f"/v1/runners/{runner_id}/taints", json={"taints": []})
    await ask("POST", f"/v1/runners/{runner_id}/drain")

    found = [
        (f"{asked}{path}", field, value)
        for asked, answer in answers.items()
        for path, field, value in timestamps(answer)
    ]
    wrong = [(where, value) for where, _, value in found if not ISO_UTC.fullmatch(value)]
    assert not wrong, wrong
    assert {field for _, field, _ in found} >= FIELDS
