"""The CLI's commands for people and programs, run as a user would (`app.cli.main` with its
output captured) against the real api: tables with a header and a row per job, pool and runner;
`--json` is the API's own answer; `cancel`; `pool delete`; schedules and rate limits. `submit`'s
own: test_cli_submit.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from app.runtime import Runtime
from tests.support import Cli, call, stubborn_job, submit


def rows(table: str) -> tuple[list[str], list[list[str]]]:
    """A table's header cells and its rows' cells (cells are split on runs of 2+ spaces)."""
    lines = table.strip().splitlines()
    split = [[cell for cell in line.split("  ") if cell] for line in lines]
    return [c.strip() for c in split[0]], [[c.strip() for c in row] for row in split[1:]]


def shown_url(http: aiohttp.ClientSession) -> str:
    return str(http._base_url).rstrip("/")


def without(body: Any, *volatile: str) -> Any:
    """`body` less the fields that move between two reads (heartbeats, wait clocks)."""
    if isinstance(body, dict):
        return {k: without(v, *volatile) for k, v in body.items() if k not in volatile}
    if isinstance(body, list):
        return [without(v, *volatile) for v in body]
    return body


async def test_tables_for_people_and_the_apis_json_for_programs(cli: Cli, system_http: aiohttp.ClientSession) -> None:
    done = await submit(system_http, payload={"command": ["echo", "hi"]})
    assert (await cli("logs", "-f", done["id"]))[1] == "hi\n"  # followed to its end
    await call(system_http, "PUT", "/v1/pools/gpu", json={"labels": ["gpu"], "paused": True, "max_concurrent": 2})
    waiting = await submit(system_http, pool="gpu", payload={"command": ["sh", "-c", "echo a long one"]})

    status, out, _ = await cli("jobs")
    assert status == 0
    header, listed = rows(out)
    assert header == ["ID", "STATE", "POOL", "AGE", "ATTEMPT", "EXIT", "COMMAND", "WHY"]
    assert [r[:3] for r in listed] == [[waiting["id"], "queued", "gpu"], [done["id"], "succeeded", "default"]]
    assert listed[0][-2:] == ["sh -c 'echo a long one'", "pool 'gpu' is paused"]
    assert listed[1][4:7] == ["1", "0", "echo hi"]
    _, out, _ = await cli("jobs", "--json")
    assert json.loads(out) == (await call(system_http, "GET", "/v1/jobs?limit=20"))[1]

    _, out, _ = await cli("pools")
    header, listed = rows(out)
    assert header[:4] == ["NAME", "LABELS", "MAX CONCURRENT", "MAX ACTIVE"]
    assert [r[:3] for r in listed] == [["default", "linux,x86_64", "20"], ["gpu", "gpu", "2"]]
    _, out, _ = await cli("pools", "--json")
    assert json.loads(out) == (await call(system_http, "GET", "/v1/pools"))[1]

    _, out, _ = await cli("runners")
    header, listed = rows(out)
    assert header == ["ID", "POOL", "STATE", "BUSY", "LABELS", "TAINTS", "LAST SEEN"]
    assert [r[1:5] for r in listed] == [["default", "active", "0/4", "linux,x86_64"]]
    _, out, _ = await cli("runners", "--json")
    api_runners = (await call(system_http, "GET", "/v1/runners"))[1]
    assert without(json.loads(out), "last_seen_at") == without(api_runners, "last_seen_at")

    status, out, _ = await cli("status")
    assert status == 0
    first, pools_table, runners_table = out.split("\n\n")
    leader = (await call(system_http, "GET", "/v1/leader"))[1]
    assert first == f"orchestrator at {shown_url(system_http)}: dispatcher {leader['lease']['holder']}"
    header, listed = rows(pools_table)
    assert header == ["POOL", "IN FLIGHT", "QUEUED", "OLDEST WAIT", "FREE SLOTS", "RUNNERS", "NOTE"]
    assert listed[0] == ["default", "0/20", "0", "-", "4", "1 active", "-"]
    assert listed[1][:3] == ["gpu", "0/2", "1"] and listed[1][-2:] == ["none", "paused"]
    assert rows(runners_table)[1][0][1] == "default"
    _, out, _ = await cli("status", "--json")
    shown = json.loads(out)
    assert shown["url"] == shown_url(system_http)
    for key, path, volatile in (
        ("leader", "/v1/leader", ("revision",)),  # the lease's: every renewal moves it on
        ("stats", "/v1/stats", ("oldest_queued_s",)),
        ("pools", "/v1/pools", ()),
        ("runners", "/v1/runners", ("last_seen_at",)),
    ):
        answer = (await call(system_http, "GET", path))[1]
        expected = answer if key in ("leader", "stats") else answer[key]
        assert without(shown[key], *volatile) == without(expected, *volatile), key


async def test_cancel_names_what_it_could_not_cancel(front_cli: Cli, http: aiohttp.ClientSession) -> None:
    await call(http, "PUT", "/v1/pools/default", json={})
    first, second = [await submit(http, key=f"k{i}") for i in range(2)]
    status, out, err = await front_cli("cancel", first["id"], "not-a-job", second["id"])
    assert status == 1
    assert out.splitlines() == [f"job {first['id']} cancelled", f"job {second['id']} cancelled"]
    assert "job not-a-job not cancelled: no job 'not-a-job': not a job id" in err
    assert "1 of 3 not cancelled: not-a-job" in err
    for job in (first, second):
        assert (await call(http, "GET", f"/v1/jobs/{job['id']}"))[1]["state"] == "cancelled"

    # --json: the API's answer for each, the error body for the one already ended.
    third = await submit(http, key="k3")
    status, out, _ = await front_cli("cancel", "--json", third["id"], first["id"])
    assert status == 1
    cancelled, refused = json.loads(out)
    got = (await call(http, "GET", f"/v1/jobs/{third['id']}"))[1]
    detail_only = {"blocked_by", "retry", "attempts"}  # GET's view of one job says more than a cancel's
    assert cancelled["state"] == "cancelled" and cancelled == {k: v for k, v in got.items() if k not in detail_only}
    assert (refused["error"]["code"], refused["error"]["field"]) == ("final", "id")


async def test_jobs_shows_a_running_job_whose_cancel_is_pending(
    cli: Cli, system_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Its runner stops it after the kill grace (10 s: it ignores SIGTERM); meanwhile the table
    says so, where it said plain `running`."""
    job = await stubborn_job(system_http, tmp_path)
    assert rows((await cli("jobs"))[1])[1][0][:2] == [job["id"], "running"]
    assert (await cli("cancel", job["id"]))[1] == f"job {job['id']} cancel requested: its runner stops it\n"
    assert rows((await cli("jobs"))[1])[1][0][:2] == [job["id"], "running (cancelling)"]


async def test_jobs_filters_by_key(front_cli: Cli, http: aiohttp.ClientSession) -> None:
    """`jobs --key K`, as `GET /v1/jobs?key=K`: the job submitted with that key, none else."""
    await call(http, "PUT", "/v1/pools/default", json={})
    keyed = await submit(http, key="build-42")
    await submit(http, key="build-43")
    status, out, _ = await front_cli("jobs", "--key", "build-42")
    assert (status, [row[0] for row in rows(out)[1]]) == (0, [keyed["id"]])
    assert rows((await front_cli("jobs", "--key", "build-44"))[1])[1] == []


async def test_pool_delete(front_cli: Cli, http: aiohttp.ClientSession) -> None:
    assert (await front_cli("pool", "set", "gpu", "--labels", "gpu"))[0] == 0
    job = await submit(http, pool="gpu")
    status, out, err = await front_cli("pool", "delete", "gpu")
    assert (status, out) == (2, "")
    assert "409: pool 'gpu' is in use: 1 live job (1 queued, 0 assigned, 0 running)" in err
    assert (await call(http, "GET", "/v1/pools/gpu"))[0] == 200

    assert (await front_cli("cancel", job["id"]))[0] == 0
    status, out, _ = await front_cli("pool", "delete", "gpu")
    assert (status, out) == (0, "pool gpu deleted, with its 1 ended job\n")
    assert (await call(http, "GET", "/v1/pools/gpu"))[0] == 404

    assert (await front_cli("pool", "set", "other"))[0] == 0
    status, out, _ = await front_cli("pool", "delete", "--json", "other")
    deleted = json.loads(out)
    assert (status, deleted["name"], deleted["deleted_jobs"]) == (0, "other", 0)
    status, _, err = await front_cli("pool", "delete", "other")
    assert (status, err.strip()) == (2, "orchestrator: 404: no pool 'other'")


async def test_submit_and_pool_set_take_flow_control(front_cli: Cli, http: aiohttp.ClientSession) -> None:
    status, out, _ = await front_cli("pool", "set", "--json", "default", "--max-starts-per-s", "2.5")
    assert status == 0 and json.loads(out)["max_starts_per_s"] == 2.5
    args = (
        "submit",
        "--concurrency-key",
        "deploy",
        "--concurrency-limit",
        "2",
        "--on-conflict",
        "reject",
        "--",
        "true",
    )
    status, out, _ = await front_cli(*args)
    job = json.loads(out)
    assert (status, job["concurrency_key"], job["concurrency_limit"], job["on_conflict"]) == (0, "deploy", 2, "reject")
    assert (await front_cli(*args))[0] == 0  # room for two
    status, _, err = await front_cli(*args)
    assert status == 2 and "409: concurrency key 'deploy' is at its limit" in err
    status, _, err = await front_cli("submit", "--rate-limit-key", "nobody-set-it", "--", "true")
    assert status == 2 and "no rate limit 'nobody-set-it'" in err


async def test_schedule_set_list_and_delete(front_cli: Cli, http: aiohttp.ClientSession, front: Runtime) -> None:
    """`schedule set NAME --cron ... -- CMD` creates (and replaces) a schedule of that command,
    `schedule list` shows it with its next fire time, `schedule delete` removes it; refusals are
    the API's, naming the field, with exit status 2."""
    assert front.store is not None
    await front.store.pool_create_if_absent("default", [])
    args = ("schedule", "set", "nightly", "--cron", "30 2 * * *", "--timezone", "Europe/Berlin")
    status, out, err = await front_cli(*args, "--catch-up", "none", "--", "make", "backup")
    assert status == 0, err
    header, [row] = rows(out)
    assert header[:4] == ["NAME", "CRON", "TIMEZONE", "NEXT FIRE"] and row[:3] == [
        "nightly",
        "30 2 * * *",
        "Europe/Berlin",
    ]
    status, view = await call(http, "GET", "/v1/schedules/nightly")
    assert view["catch_up"] == "none" and view["overlap"] == "skip"
    assert view["job"]["payload"] == {"command": ["make", "backup"]} and view["job"]["pool"] == "default"

    status, out, err = await front_cli("schedule", "set", "nightly", "--cron", "0 3 * * *", "--overlap", "allow",
                                       "--", "make", "backup")  # fmt: skip
    assert status == 0, err
    status, out, _ = await front_cli("schedule", "list", "--json")
    [listed] = json.loads(out)["schedules"]
    assert (listed["cron"], listed["overlap"], listed["catch_up"]) == ("0 3 * * *", "allow", "latest")

    status, _, err = await front_cli("schedule", "set", "bad", "--cron", "61 * * * *", "--", "true")
    assert status == 2 and "61 * * * *" in err and "cron" in err
    status, _, err = await front_cli("schedule", "set", "bad", "--cron", "* * * * *")
    assert status == 2 and "after --" in err

    status, out, err = await front_cli("schedule", "delete", "nightly")
    assert status == 0 and "deleted" in out, err
    status, out, _ = await front_cli("schedule", "list")
    assert rows(out)[1] == []
    status, _, err = await front_cli("schedule", "delete", "nightly")
    assert status == 2 and "no schedule 'nightly'" in err


async def test_rate_limit_set_list_and_delete(front_cli: Cli, http: aiohttp.ClientSession) -> None:
    """`rate-limit set KEY --limit N --period S` creates (and changes) a rate limit, `rate-limit
    list` shows each with its starts left and next start, `--json` is the API's answer, `rate-limit
    delete` lifts it; refusals name what was wrong, with exit status 2 and nothing changed."""
    status, out, err = await front_cli("rate-limit", "set", "search", "--limit", "10", "--period", "60", "--burst", "2")
    assert status == 0, err
    header, [row] = rows(out)
    assert header == ["KEY", "LIMIT", "PERIOD", "BURST", "STARTS LEFT", "NEXT START"]  # as every table's
    assert row == ["search", "10", "60s", "2", "2", "now"]
    assert (await call(http, "GET", "/v1/rate-limits/search"))[1]["burst"] == 2
    status, _, err = await front_cli("rate-limit", "set", "api", "--limit", "1", "--period", "0.5")
    assert status == 0, err

    status, out, _ = await front_cli("rate-limit", "list")
    assert [r[0] for r in rows(out)[1]] == ["api", "search"]
    status, out, _ = await front_cli("rate-limit", "list", "--json")
    assert status == 0 and json.loads(out) == (await call(http, "GET", "/v1/rate-limits"))[1]

    for args, said in (
        (("set", "search", "--limit", "2", "--period", "60", "--burst", "3"), "--burst: must not exceed limit (2)"),
        (("set", "search", "--limit", "1", "--period", "0"), "--period"),
        (("set", "not a key", "--limit", "1", "--period", "1"), "is not a rate-limit key"),
    ):
        status, _, err = await front_cli("rate-limit", *args)
        assert status == 2 and said in err, (args, err)
    assert (await call(http, "GET", "/v1/rate-limits/search"))[1]["limit"] == 10  # unchanged

    status, out, err = await front_cli("rate-limit", "delete", "search", "--json")
    assert status == 0 and (json.loads(out)["key"], json.loads(out)["deleted"]) == ("search", True), err
    status, out, err = await front_cli("rate-limit", "delete", "api")
    assert status == 0 and "rate limit api deleted" in out, err
    status, out, _ = await front_cli("rate-limit", "list")
    assert rows(out)[1] == []
    status, _, err = await front_cli("rate-limit", "delete", "api")
    assert status == 2 and "no rate limit 'api'" in err
