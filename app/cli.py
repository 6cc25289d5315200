"""The `orchestrator` command: run the system (`up`, `serve`, `runner`, `migrate`) and talk to a
running one over HTTP (`submit`, `jobs`, `logs`, `pools`, `pool set`, `runners`, `status`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import IncompleteRead
from typing import TYPE_CHECKING, Any

from app import endpoints
from app.main_loop import Signals, run, setup_logging
from orchestrator.errors import OrchestratorError
from orchestrator.redact import redact_url
from orchestrator.settings import Settings, default_instance_id

if TYPE_CHECKING:
    from app.runtime import Runtime

# The runtime, the store, the bus and the runner are imported by the commands that use them:
# importing every service costs most of a second, and the HTTP client commands need none of them.

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


async def _serve(runtime: Runtime, announce: bool) -> int:
    signals = None  # until started, Ctrl-C interrupts the start
    try:
        await runtime.start()
        signals = Signals()
        if announce:
            runtime.write_endpoints()
            e = runtime.endpoints()
            shown = " ".join(f"{name}={redact_url(url) if url else url}" for name, url in e.items())
            print(f"orchestrator ready {shown}", flush=True)  # the endpoints file has them whole
        await signals.stop.wait()
    finally:
        await (runtime.stop() if signals is None else signals.stopping(runtime.stop(), runtime.hurry))
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import SERVICES, Runtime

    return run(_serve(Runtime(settings, SERVICES, migrate=True), announce=True))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import SERVICES, Runtime

    names = list(SERVICES) if "all" in args.services else args.services  # Runtime refuses unknown names
    runtime = Runtime(endpoints.joined(settings), names, migrate=False)
    return run(_serve(runtime, announce="api" in names))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.store import Store

    async def go() -> int:
        if not settings.database_url:
            raise OrchestratorError("set ORCH_DATABASE_URL to the Postgres to migrate")
        store = Store(settings.database_url, max_size=1)
        await store.connect()
        try:
            applied = await store.migrate()
        finally:
            await store.close()
        print(f"applied migrations: {applied or 'none (up to date)'}")
        return 0

    return run(go())


def cmd_runner(args: argparse.Namespace, settings: Settings) -> int:
    from app.runner_agent import RunnerOptions, serve_runner

    labels = None if args.labels is None else [x for x in args.labels.split(",") if x]
    options = RunnerOptions(
        runner_id=args.id,
        pool=args.pool,
        labels=labels,
        slots=args.slots,
        taints=args.taint,
        once=args.once,
        idle_timeout_s=args.idle_timeout,
    )
    return run(serve_runner(endpoints.joined(settings), options))


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import SERVICES
    from orchestrator import health

    roles = args.roles or health.roles_from_argv(health.pid1_argv(), SERVICES)
    needs = health.needs_of(roles, settings)
    # nats-py logs a traceback per failed connect attempt; the probe's one-line verdict says it.
    logging.getLogger("nats").setLevel(logging.CRITICAL)

    async def go() -> int:
        problems = await health.check(settings, needs)
        for problem in problems:
            print(f"unhealthy: {problem}", file=sys.stderr)
        if not problems:
            print(f"healthy: {', '.join(sorted(needs)) or 'nothing to check'}")
        return 1 if problems else 0

    return run(go())


# --- client commands (HTTP) -----------------------------------------------------------------------


def api_url(settings: Settings) -> str:
    """ORCH_URL, else the endpoints file `up` wrote in the data dir, else ORCH_HTTP_HOST/PORT."""
    if url := os.environ.get("ORCH_URL"):
        return url.rstrip("/")
    found = endpoints.read(settings.data_dir)
    if found is not None and found.http:
        return found.http.rstrip("/")
    return f"http://{settings.http_host}:{settings.http_port}"


class ApiError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _request(settings: Settings, method: str, path: str, body: Any = None) -> urllib.request.Request:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("ORCH_TOKEN"):  # when the API's auth is on
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(api_url(settings) + path, data=data, method=method, headers=headers)


def http(settings: Settings, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(_request(settings, method, path, body), timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.URLError as exc:
        raise _failure(settings, exc) from None


def _failure(settings: Settings, exc: urllib.error.URLError) -> ApiError:
    """The API's error (its status and message), or why it could not be reached."""
    if isinstance(exc, urllib.error.HTTPError):
        payload = json.loads(exc.read() or b"null")
        message = (payload or {}).get("error", {}).get("message", exc.reason)
        return ApiError(f"{exc.code}: {message}", exc.code)
    return ApiError(f"cannot reach the orchestrator at {api_url(settings)}: {exc.reason}")


def _seconds(text: str) -> float:
    """A positive number of seconds, as the API takes `timeout_s`: 0 is refused here too, rather
    than read as "no timeout" (omit the option for that)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text} (omit it for no timeout)")
    return value


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ApiError("give the command to run after --, e.g. orchestrator submit -- echo hi")
    spec: dict[str, Any] = {
        "pool": args.pool,
        "labels": args.label,
        "priority": args.priority,
        "payload": {"command": command},
    }
    if args.key:
        spec["key"] = args.key
    if args.timeout is not None:
        spec["timeout_s"] = args.timeout
    _, job = http(settings, "POST", "/v1/jobs", spec)
    if not args.wait:
        print(json.dumps(job, indent=2))
        return 0
    if not args.json:  # as `docker run` does: the output live, then the job's exit code
        print_logs(settings, job["id"], follow=True)
    while job["state"] not in FINAL:  # followed to its end already, unless --json
        time.sleep(0.1)
        _, job = http(settings, "GET", f"/v1/jobs/{job['id']}")
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        ended = f"exit code {job['exit_code']}" if job["exit_code"] is not None else job["reason"]
        print(f"orchestrator: job {job['id']} {job['state']} ({ended})", file=sys.stderr)
    if job["state"] == "succeeded":
        return 0
    code = job["exit_code"]
    if code is None or code == 0:
        return 1
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as shells say


def print_logs(settings: Settings, job_id: str, *, follow: bool) -> None:
    """A job's output to stdout as it arrives (followed: until the job has ended)."""
    path = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/logs" + ("?follow=true" if follow else "")
    out = sys.stdout.buffer
    try:
        # A followed job may print nothing for a long time: no read timeout (the server ends the
        # stream when the job ends).
        with urllib.request.urlopen(_request(settings, "GET", path), timeout=None if follow else 30) as resp:
            while data := resp.read1(65536):
                out.write(data)
                out.flush()
    except urllib.error.URLError as exc:
        raise _failure(settings, exc) from None
    except IncompleteRead:
        raise ApiError(f"the orchestrator at {api_url(settings)} closed the stream of job {job_id}'s output") from None


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    print_logs(settings, args.job, follow=args.follow)
    return 0


def _show(settings: Settings, path: str) -> int:
    _, body = http(settings, "GET", path)
    print(json.dumps(body, indent=2))
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("pool", args.pool), ("state", args.state), ("limit", args.limit)) if v)
    return _show(settings, f"/v1/jobs?{query}")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    _, pools = http(settings, "GET", "/v1/pools")
    _, runners = http(settings, "GET", "/v1/runners")
    print(json.dumps({"url": api_url(settings), **pools, **runners}, indent=2))
    return 0


def _csv(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def cmd_pool_set(args: argparse.Namespace, settings: Settings) -> int:
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
    }
    given = {k: v for k, v in fields.items() if v is not None}
    path = f"/v1/pools/{urllib.parse.quote(args.name, safe='')}"
    try:
        _, pool = http(settings, "PATCH", path, given)
    except ApiError as exc:
        if exc.status != 404:
            raise
        _, pool = http(settings, "PUT", path, given)
    print(json.dumps(pool, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="run everything in one process on an embedded NATS and Postgres").set_defaults(fn=cmd_up)
    serve = sub.add_parser("serve", help="run services against ORCH_NATS_URL and ORCH_DATABASE_URL")
    serve.add_argument(
        "services", nargs="+", metavar="SERVICE", help="capacity, admission, dispatch, provisioner, api, runner, or all"
    )
    serve.set_defaults(fn=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations to ORCH_DATABASE_URL").set_defaults(fn=cmd_migrate)
    check = sub.add_parser("health", help="the container healthcheck: exit 0 when what the role needs answers")
    check.add_argument("roles", nargs="*", help="default: the roles of PID 1's command line (the container's)")
    check.set_defaults(fn=cmd_health)

    runner = sub.add_parser("runner", help="run a runner agent against ORCH_NATS_URL")
    runner.add_argument("--pool", default="default")
    runner.add_argument("--labels", default=None, help="comma-separated (default: OS and architecture)")
    runner.add_argument("--slots", type=int, default=4)
    runner.add_argument("--taint", action="append", default=[])
    runner.add_argument("--id", default=f"runner-{default_instance_id()}-{int(time.time())}")
    runner.add_argument("--once", action="store_true", help="take exactly one job, report it and exit")
    runner.add_argument(
        "--idle-timeout", type=float, default=60.0, help="with --once: exit if no job came within this (seconds)"
    )
    runner.set_defaults(fn=cmd_runner)

    submit = sub.add_parser("submit", help="submit a job: orchestrator submit [options] -- CMD [ARGS]")
    submit.add_argument("--pool", default="default")
    submit.add_argument("--label", action="append", default=[])
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--key")
    submit.add_argument("--timeout", type=_seconds, help="seconds the job may run (default: no timeout)")
    submit.add_argument(
        "--wait", action="store_true", help="print the job's output as it runs; exit with its exit code"
    )
    submit.add_argument("--json", action="store_true", help="with --wait: print the ended job as JSON, not its output")
    submit.add_argument("command", nargs=argparse.REMAINDER)
    submit.set_defaults(fn=cmd_submit)

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--pool")
    jobs.add_argument("--state")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(fn=cmd_jobs)
    logs_cmd = sub.add_parser("logs", help="a job's output")
    logs_cmd.add_argument("job", help="the job's id")
    logs_cmd.add_argument("-f", "--follow", action="store_true", help="stream it until the job has ended")
    logs_cmd.set_defaults(fn=cmd_logs)
    sub.add_parser("pools", help="list pools").set_defaults(fn=lambda a, s: _show(s, "/v1/pools"))
    pool = sub.add_parser("pool", help="change a pool").add_subparsers(dest="pool_cmd", required=True)
    pool_set = pool.add_parser("set", help="set the given fields of a pool (creating it if needed)")
    pool_set.add_argument("name")
    pool_set.add_argument("--max-concurrent", type=int, help="assigned + running at once; negative = unlimited")
    pool_set.add_argument("--max-active", type=int, help="queued + assigned + running; negative = unlimited")
    pool_set.add_argument("--labels", help="comma-separated labels the pool offers ('' for none)")
    pool_set.add_argument("--allowed-plans", help="comma-separated plans that may use it ('' for any)")
    pool_set.add_argument("--mode", choices=["shared", "leader"])
    pool_set.add_argument("--paused", action=argparse.BooleanOptionalAction, default=None)
    pool_set.add_argument("--provisioner", help="start a one-shot worker per job with it (e.g. local)")
    pool_set.add_argument("--max-workers", type=int, help="live provisioned workers at most; 0 = no cap")
    pool_set.set_defaults(fn=cmd_pool_set)
    sub.add_parser("runners", help="list runners").set_defaults(fn=lambda a, s: _show(s, "/v1/runners"))
    sub.add_parser("status", help="pools and runners at a glance").set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        setup_logging(settings)
        return args.fn(args, settings)
    except (OrchestratorError, ApiError) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
