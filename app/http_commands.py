"""The commands that talk to a running system through its HTTP API, with the Python client
(`orchestrator.client`): `submit`, `jobs`, `logs`, `cancel`, `pools`, `pool set|delete`,
`schedule set|list|delete`, `runners`, `status`; `rate-limit set|list|delete` are
app/rate_limit_commands.py, run the same way (`run`).

For people: tables (their columns and rows: app/rows.py) and one-line answers. With `--json`,
for programs: the API's answer as it sent it, unchanged (`status --json`: its four answers under
one object). Errors go to stderr as `orchestrator: ...` and the exit status says it: 2 when the
command could not be done, 1 when `cancel` could not cancel some of its jobs (named), a job's own
exit status for `submit --wait`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from app import endpoints, rows, tables
from app.progress import Progress
from orchestrator.client import ApiError, Client, calls
from orchestrator.client.calls import Call
from orchestrator.settings import Settings
from schemas.api import JobDetail
from schemas.events import error_from_validation
from schemas.jobs import JobSpec, JobState
from schemas.schedules import ScheduleSpec

Command = Callable[[argparse.Namespace, Client], Awaitable[int]]


def api_url(settings: Settings) -> str:
    """ORCH_URL, else the endpoints file `up` wrote in the data dir, else ORCH_HTTP_HOST/PORT."""
    if url := os.environ.get("ORCH_URL"):
        return url.rstrip("/")
    found = endpoints.read(settings.data_dir)
    if found is not None and found.http:
        return found.http.rstrip("/")
    return f"http://{settings.http_host}:{settings.http_port}"


def api_token(settings: Settings) -> str | None:
    """ORCH_TOKEN, else this machine's first operator token (the operator may call every route)."""
    if token := os.environ.get("ORCH_TOKEN"):
        return token
    operators = [token for role, token in settings.api_tokens() if role == "operator"]
    return operators[0] if operators else None


def run(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> int:
        async with Client(api_url(settings), token=api_token(settings)) as client:
            return await command(args, client)

    try:
        return asyncio.run(go())
    except (ApiError, UsageError) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2


def print_json(raw: Any) -> None:
    print(json.dumps(raw, indent=2))


class UsageError(Exception):
    """The command line asks for something impossible; nothing was sent."""


# --- jobs ----------------------------------------------------------------------------------------


def _given(**fields: Any) -> dict[str, Any]:
    """The fields an option set: one left out takes the API's default."""
    return {name: value for name, value in fields.items() if value is not None}


async def submit(args: argparse.Namespace, client: Client) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("give the command to run after --, e.g. orchestrator submit -- echo hi")
    payload = _given(command=command, env=dict(args.env) or None, cwd=args.cwd)
    given = {"pool": args.pool, "labels": args.label, "priority": args.priority, "payload": payload}
    given |= _given(
        key=args.key or None,
        timeout_s=args.timeout,
        retry={"on": args.retry} if args.retry else None,
        max_attempts=args.max_attempts,
        delay_s=args.delay,
        concurrency_key=args.concurrency_key,
        concurrency_limit=args.concurrency_limit,
        on_conflict=args.on_conflict,
        rate_limit_key=args.rate_limit_key,
    )
    try:
        spec = JobSpec.model_validate(given)
    except ValidationError as exc:
        raise UsageError(error_from_validation(exc).message) from None
    submitted = calls.submit(spec)
    created = await client.send_json(submitted)
    if not args.wait:
        print_json(created)
        return 0
    job_id = submitted.parse(created).id
    try:
        ended = await _wait(client, job_id, output=not args.json)
    except asyncio.CancelledError:  # Ctrl-C: it stops the waiting, not the job, and says so
        print(f"orchestrator: job {job_id} goes on without you: orchestrator cancel {job_id}", file=sys.stderr)
        raise
    if args.json:
        print_json(await client.send_json(calls.get_job(ended.id)))
    else:
        how = f"exit code {ended.exit_code}" if ended.exit_code is not None else ended.reason
        said = f" ({how})" if how and how != ended.state else ""
        print(f"orchestrator: job {ended.id} {ended.state}{said}", file=sys.stderr)
    return exit_status(ended)


async def _wait(client: Client, job_id: Any, *, output: bool) -> JobDetail:
    """Until the job has ended: its waits on stderr (`Progress`), its output (unless not wanted)
    to stdout as it comes, as `docker run` does."""
    progress = Progress(sys.stderr)

    async def watch() -> JobDetail:
        async for job in client.watch(job_id):
            progress.show(job)
        return job

    watching = asyncio.create_task(watch())
    try:
        if not output:
            return await watching
        out = sys.stdout.buffer
        async for chunk in client.logs(job_id, follow=True):
            progress.clear()
            out.write(chunk)
            out.flush()
        # The followed output ends with the job: its end is there now, not at the watch's next poll.
        return await client.wait(job_id)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        progress.clear()


def exit_status(job: JobDetail) -> int:
    if job.state == JobState.succeeded:
        return 0
    code = job.exit_code
    if code is None or code == 0:
        return 1
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as shells say


Rows = Callable[[Any], Iterable[tuple[object, ...]]]


async def show_listing(
    args: argparse.Namespace, client: Client, call: Call[Any], columns: Sequence[str], to_rows: Rows
) -> int:
    """A listing: the API's answer with --json, else a table of `to_rows` of the parsed answer."""
    raw = await client.send_json(call)
    if args.json:
        print_json(raw)
    else:
        print(tables.table(columns, to_rows(call.parse(raw))))
    return 0


async def jobs(args: argparse.Namespace, client: Client) -> int:
    listing = calls.list_jobs(pool=args.pool, state=args.state, key=args.key, limit=args.limit)
    return await show_listing(args, client, listing, rows.JOB_COLUMNS, lambda answer: map(rows.job_row, answer.jobs))


async def logs(args: argparse.Namespace, client: Client) -> int:
    out = sys.stdout.buffer
    async for chunk in client.logs(args.job, follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0


async def cancel(args: argparse.Namespace, client: Client) -> int:
    """Each job in turn; those that could not be cancelled are named on stderr (exit status 1).
    `--json`: the API's answer for each, in order (the job, or the error)."""
    answers, failed = [], []
    for job_id in args.jobs:
        try:
            raw = await client.send_json(calls.cancel_job(job_id))
        except ApiError as exc:
            if exc.status is None:  # the API is not there: nothing more can be cancelled either
                raise
            answers.append({"error": {"code": exc.code, "message": exc.message, "field": exc.field}})
            failed.append(job_id)
            print(f"orchestrator: job {job_id} not cancelled: {exc.message}", file=sys.stderr)
            continue
        answers.append(raw)
        if not args.json:
            job = calls.cancel_job(job_id).parse(raw)
            done = "cancelled" if job.state == JobState.cancelled else "cancel requested: its runner stops it"
            print(f"job {job.id} {done}")
    if args.json:
        print_json(answers)
    if failed:
        print(f"orchestrator: {len(failed)} of {len(args.jobs)} not cancelled: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# --- pools, runners, status ----------------------------------------------------------------------


async def pools(args: argparse.Namespace, client: Client) -> int:
    return await show_listing(
        args, client, calls.list_pools(), rows.POOL_COLUMNS, lambda answer: map(rows.pool_row, answer.pools)
    )


def _csv(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


async def pool_set(args: argparse.Namespace, client: Client) -> int:
    """Change only the given fields; a pool that does not exist yet is created with them."""
    fields = {
        "max_concurrent": args.max_concurrent,
        "max_active": args.max_active,
        "labels": None if args.labels is None else _csv(args.labels),
        "allowed_plans": None if args.allowed_plans is None else _csv(args.allowed_plans),
        "mode": args.mode,
        "paused": args.paused,
        "provisioner": args.provisioner,
        "max_workers": args.max_workers,
        "shard": args.shard,
        "max_starts_per_s": args.max_starts_per_s,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    change = calls.patch_pool(args.name, given)
    try:
        raw = await client.send_json(change)
    except ApiError as exc:
        if exc.status != 404:
            raise
        change = calls.put_pool(args.name, given)  # create it, with these fields
        raw = await client.send_json(change)
    if args.json:
        print_json(raw)
        return 0
    pool = change.parse(raw)
    print(tables.table(rows.POOL_COLUMNS, [rows.pool_row(pool)]))
    if pool.failed_jobs:
        print(f"{pool.failed_jobs} queued jobs failed: the change left them nothing to run on (unsatisfiable)")
    return 0


async def pool_delete(args: argparse.Namespace, client: Client) -> int:
    deletion = calls.delete_pool(args.name)
    raw = await client.send_json(deletion)
    if args.json:
        print_json(raw)
        return 0
    deleted = deletion.parse(raw)
    jobs = "job" if deleted.deleted_jobs == 1 else "jobs"
    print(f"pool {deleted.name} deleted, with its {deleted.deleted_jobs} ended {jobs}")
    return 0


# --- schedules -----------------------------------------------------------------------------------


async def schedule_set(args: argparse.Namespace, client: Client) -> int:
    """Create or replace a schedule of the command after `--` (what is not given takes its default)."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError(
            "give the command to run after --, e.g. orchestrator schedule set nightly --cron '0 3 * * *' -- make"
        )
    job: dict[str, Any] = {"pool": args.pool, "labels": args.label, "payload": {"command": command}}
    job |= {"priority": args.priority} if args.priority is not None else {}
    job |= {"timeout_s": args.timeout} if args.timeout is not None else {}
    given = {"cron": args.cron, "timezone": args.timezone, "overlap": args.overlap, "catch_up": args.catch_up,
             "paused": args.paused}  # fmt: skip
    try:
        spec = ScheduleSpec.model_validate({"job": job, **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as exc:
        raise UsageError(error_from_validation(exc).message) from None
    put = calls.put_schedule(args.name, spec)
    raw = await client.send_json(put)
    if args.json:
        print_json(raw)
    else:
        print(tables.table(rows.SCHEDULE_COLUMNS, [rows.schedule_row(put.parse(raw))]))
    return 0


async def schedule_list(args: argparse.Namespace, client: Client) -> int:
    listing = calls.list_schedules()
    return await show_listing(
        args, client, listing, rows.SCHEDULE_COLUMNS, lambda answer: map(rows.schedule_row, answer.schedules)
    )


async def schedule_delete(args: argparse.Namespace, client: Client) -> int:
    raw = await client.send_json(calls.delete_schedule(args.name))
    if args.json:
        print_json(raw)
    else:
        print(f"schedule {args.name} deleted: it fires no more (the jobs it fired stay)")
    return 0


# `runners` and `status` show the first page of runners (id order), as large as the API gives.
RUNNERS_SHOWN = 1000


async def runners(args: argparse.Namespace, client: Client) -> int:
    listing = calls.list_runners(limit=RUNNERS_SHOWN)
    raw = await client.send_json(listing)
    if args.json:
        print_json(raw)
        return 0
    page = listing.parse(raw)
    print(tables.table(rows.RUNNER_COLUMNS, [rows.runner_row(r) for r in page.runners]))
    if more := rows.more_runners(page):
        print(more)
    return 0


async def status(args: argparse.Namespace, client: Client) -> int:
    """One screen: who dispatches, each pool's jobs in flight against its cap and its queue, and
    the runners that are not lost."""
    asked = (calls.get_leader(), calls.get_stats(), calls.list_pools(), calls.list_runners(limit=RUNNERS_SHOWN))
    leader, stats, pools_, runners_ = await asyncio.gather(*(client.send_json(c) for c in asked))
    if args.json:
        print_json({"url": client.url, "leader": leader, "stats": stats, **pools_, "runners": runners_["runners"]})
        return 0
    print(f"orchestrator at {client.url}: {rows.dispatchers(asked[0].parse(leader))}\n")
    counts = asked[1].parse(stats)
    print(tables.table(rows.STATUS_POOL_COLUMNS, [rows.status_row(p, counts.runners) for p in counts.pools]))
    page = asked[3].parse(runners_)
    live = [r for r in page.runners if r.state != "lost"]
    print()
    print(tables.table(rows.RUNNER_COLUMNS, [rows.runner_row(r) for r in live]) if live else "no runners")
    if lost := len(page.runners) - len(live):
        print(f"(and {lost} lost runners: `orchestrator runners` lists them)")
    if more := rows.more_runners(page):
        print(more)
    return 0
