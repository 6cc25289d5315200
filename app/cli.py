"""The `orchestrator` command: run the system (`up`, `serve`, `runner`, `migrate`) and talk to a
running one over HTTP (`submit`, `jobs`, `logs`, `cancel`, `pools`, `pool set|delete`, `schedule
set|list|delete`, `runners`, `status`: app/http_commands.py; `rate-limit set|list|delete`:
app/rate_limit_commands.py)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from app import endpoints
from app.main_loop import Signals, run, setup_logging
from orchestrator import logs
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings, default_instance_id

if TYPE_CHECKING:
    from app.runtime import Runtime

# The runtime, the store, the bus and the runner are imported by the commands that use them:
# importing every service costs most of a second, and the HTTP client commands need none of them.
# Those (app/http_commands.py) are imported only to run one: the client's aiohttp and answer models
# cost a quarter of a second that `up`, `serve` and `runner` need not pay.


async def _serve(runtime: Runtime, announce: bool) -> int:
    signals = None  # until started, Ctrl-C interrupts the start
    try:
        await runtime.start()
        signals = Signals()
        if announce:
            runtime.write_endpoints()
            # The endpoints file has them whole, and the NATS token.
            print(f"orchestrator ready {runtime.endpoints().shown()}", flush=True)
        await signals.stop.wait()
    finally:
        await (runtime.stop() if signals is None else signals.stopping(runtime.stop(), runtime.hurry))
    return 0


def _joined(settings: Settings) -> Settings:
    """The settings joined to the `up` of their data dir (`endpoints.joined`), whose secrets this
    process's log masks from now on."""
    joined = endpoints.joined(settings)
    logs.mask(joined.secret_values())
    return joined


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import SERVICES, Runtime

    return run(_serve(Runtime(settings, SERVICES, migrate=True), announce=True))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import SERVICES, Runtime

    names = list(SERVICES) if "all" in args.services else args.services  # Runtime refuses unknown names
    runtime = Runtime(_joined(settings), names, migrate=False)
    return run(_serve(runtime, announce="api" in names))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.store import Store

    async def go() -> int:
        if not settings.database_url:
            raise OrchestratorError("set ORCH_DATABASE_URL to the Postgres to migrate")
        store = Store.from_settings(settings, max_size=1)
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
    return run(serve_runner(_joined(settings), options))


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


def _variable(text: str) -> tuple[str, str]:
    """NAME=VALUE, as `env` takes it: split at the first '=' (the value may hold more)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"give NAME=VALUE, not {text!r}")
    return name, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrator",
        description="Run the system (up, serve, runner, migrate) or talk to a running one over HTTP "
        "(the other commands: the API from ORCH_URL, else .orchestrator/endpoints.json). README.md says more.",
    )
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

    # Every command that talks to the API takes --json: its answer, unchanged, for programs.
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's answer as JSON (for programs)")

    def api(
        name: str, command: str, help: str, parent: Any = sub, module: str = "http_commands"
    ) -> argparse.ArgumentParser:
        """A command of app/<module>.py (app/http_commands.py unless said), by its function's name."""
        command_parser: argparse.ArgumentParser = parent.add_parser(name, help=help, parents=[as_json])
        command_parser.set_defaults(api=command, api_module=module)
        return command_parser

    submit = api("submit", "submit", "submit a job: orchestrator submit [options] -- CMD [ARGS]")
    submit.add_argument("--pool", default="default", help="the pool it runs in (default: default)")
    submit.add_argument("--label", action="append", default=[], help="a label its runner must offer (repeatable)")
    submit.add_argument("--priority", type=int, default=0, help="higher first (default 0)")
    submit.add_argument("--key", help="idempotency: the same key and spec give the same job")
    submit.add_argument("--timeout", type=_seconds, help="seconds the job may run (default: no timeout)")
    submit.add_argument("--concurrency-key", help="jobs of one key run at most --concurrency-limit at once")
    submit.add_argument("--concurrency-limit", type=int, help="jobs of its key at once (default 1)")
    submit.add_argument(
        "--on-conflict",
        choices=["queue", "cancel_in_progress", "cancel_pending", "reject"],
        help="what it does to its key's other jobs (default: queue)",
    )
    submit.add_argument("--rate-limit-key", help="a rate limit its start counts against (orchestrator rate-limit set)")
    submit.add_argument(
        "--env",
        type=_variable,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in its environment (repeatable)",
    )
    submit.add_argument("--cwd", help="the directory it runs in, on its runner (default: the runner's)")
    submit.add_argument(
        "--retry",
        action="append",
        choices=["lost", "failed", "timed_out"],
        help="an attempt's end that starts another, while attempts remain (repeatable; default: lost)",
    )
    submit.add_argument("--max-attempts", type=int, help="attempts in all, the first included (default 3)")
    submit.add_argument("--delay", type=float, metavar="SECONDS", help="not started before this many seconds from now")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="print the job's output as it runs (on stderr why it waits, while it does) and exit with its exit "
        "code; with --json, print the ended job instead of its output (without --wait: the submitted job)",
    )
    submit.add_argument("command", nargs=argparse.REMAINDER)

    jobs = api("jobs", "jobs", "list jobs, newest first")
    jobs.add_argument("--pool", help="only this pool's")
    jobs.add_argument("--state", help="only those in this state (queued, running, failed, ...)")
    jobs.add_argument("--key", help="only the job submitted with this key")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (1 to 1000, default 20)")
    cancel = api("cancel", "cancel", "cancel jobs: queued ones at once, running ones by their runner")
    cancel.add_argument("jobs", nargs="+", metavar="JOB", help="a job's id")
    logs_cmd = sub.add_parser("logs", help="a job's output")
    logs_cmd.add_argument("job", help="the job's id")
    logs_cmd.add_argument("-f", "--follow", action="store_true", help="stream it until the job has ended")
    logs_cmd.set_defaults(api="logs")
    api("pools", "pools", "list pools")
    pool = sub.add_parser("pool", help="change or delete a pool").add_subparsers(dest="pool_cmd", required=True)
    pool_set = api("set", "pool_set", "set the given fields of a pool (creating it if needed)", pool)
    pool_set.add_argument("name")
    pool_set.add_argument("--max-concurrent", type=int, help="assigned + running at once; negative = unlimited")
    pool_set.add_argument("--max-active", type=int, help="queued + assigned + running; negative = unlimited")
    pool_set.add_argument("--labels", help="comma-separated labels the pool offers ('' for none)")
    pool_set.add_argument("--allowed-plans", help="comma-separated plans that may use it ('' for any)")
    pool_set.add_argument("--mode", choices=["shared", "leader"])
    pool_set.add_argument("--paused", action=argparse.BooleanOptionalAction, default=None)
    pool_set.add_argument("--provisioner", help="start a one-shot worker per job with it (e.g. local)")
    pool_set.add_argument("--max-workers", type=int, help="live provisioned workers at most; 0 = no cap")
    pool_set.add_argument("--shard", type=int, help="the dispatch shard of its jobs, below ORCH_DISPATCH_SHARDS")
    pool_set.add_argument("--max-starts-per-s", type=float, help="jobs started per second at most, spread evenly")
    pool_delete = api(
        "delete", "pool_delete", "delete a pool and its ended jobs (refused while jobs or runners use it)", pool
    )
    pool_delete.add_argument("name")
    schedule = sub.add_parser("schedule", help="set, list or delete schedules (a job on a cron)")
    schedules = schedule.add_subparsers(dest="schedule_cmd", required=True)
    schedule_set = api(
        "set", "schedule_set", "create or replace a schedule: orchestrator schedule set NAME --cron C -- CMD", schedules
    )
    schedule_set.add_argument("name")
    schedule_set.add_argument("--cron", required=True, help="5 fields, or 6 with seconds first (quote it)")
    schedule_set.add_argument("--timezone", help="an IANA time zone (default UTC)")
    schedule_set.add_argument("--overlap", choices=["skip", "allow", "cancel_previous"], help="default skip")
    schedule_set.add_argument("--catch-up", choices=["none", "latest", "all"], help="default latest")
    schedule_set.add_argument("--paused", action=argparse.BooleanOptionalAction, default=None)
    schedule_set.add_argument("--pool", default="default")
    schedule_set.add_argument("--label", action="append", default=[])
    schedule_set.add_argument("--priority", type=int)
    schedule_set.add_argument("--timeout", type=_seconds, help="seconds each job may run (default: no timeout)")
    # The command after `--` is taken by `main` (after NAME, argparse would leave it unparsed).
    schedule_set.set_defaults(command=[])
    api("list", "schedule_list", "list schedules with their next fire time and last job", schedules)
    schedule_delete = api("delete", "schedule_delete", "delete a schedule (the jobs it fired stay)", schedules)
    schedule_delete.add_argument("name")
    rate_limit = sub.add_parser("rate-limit", help="set, list or delete rate limits (a job's rate_limit_key)")
    rate_limits = rate_limit.add_subparsers(dest="rate_limit_cmd", required=True)

    def rate_limit_api(name: str, help: str) -> argparse.ArgumentParser:
        return api(name, f"rate_limit_{name}", help, rate_limits, "rate_limit_commands")

    rate_limit_set = rate_limit_api("set", "create or change a rate limit: at most --limit starts per --period")
    rate_limit_set.add_argument("key")
    rate_limit_set.add_argument("--limit", type=int, required=True, help="starts per period at most")
    rate_limit_set.add_argument("--period", type=float, required=True, metavar="SECONDS", help="the period")
    rate_limit_set.add_argument("--burst", type=int, help="starts at once after a quiet spell (default 1: evenly)")
    rate_limit_api("list", "list rate limits with their starts left and next start")
    rate_limit_delete = rate_limit_api("delete", "delete a rate limit (its queued jobs start without it)")
    rate_limit_delete.add_argument("key")
    api("runners", "runners", "list runners")
    api("status", "status", "one screen: the dispatcher, each pool's jobs and queue, the runners")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest[:1] == ["--"] and getattr(args, "api", None) == "schedule_set":
        args.command = rest[1:]  # `schedule set NAME [options] -- CMD [ARGS]`
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings = Settings.from_env()
        setup_logging(settings)
        if hasattr(args, "api"):
            from app import http_commands

            commands = importlib.import_module(f"app.{getattr(args, 'api_module', 'http_commands')}")
            return http_commands.run(getattr(commands, args.api), args, settings)
        return args.fn(args, settings)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `orchestrator jobs | head`: its reader had what it wanted
        # stdout's buffer would fail again when flushed at exit: point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # as a shell reports a writer its reader left


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
