"""`orchestrator rate-limit set|list|delete`: rate limits over HTTP, with the Python client, run
as the other commands are (app/http_commands.py: a table or a line for people, the API's answer
with `--json`, errors on stderr)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from app import rows, tables
from app.http_commands import UsageError, print_json, show_listing
from orchestrator.client import Client, calls
from schemas.rate_limits import RateLimitConfig

OPTIONS = {"limit": "--limit", "period_s": "--period", "burst": "--burst"}  # each field's option


async def rate_limit_set(args: argparse.Namespace, client: Client) -> int:
    """Create or change a rate limit (a change keeps the starts already made)."""
    given = {"limit": args.limit, "period_s": args.period, "burst": args.burst}
    try:
        config = RateLimitConfig.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UsageError(f"{OPTIONS.get(str(first['loc'][0]), first['loc'][0])}: {first['msg']}") from None
    put = calls.put_rate_limit(args.key, config)
    raw = await client.send_json(put)
    if args.json:
        print_json(raw)
    else:
        print(tables.table(rows.RATE_LIMIT_COLUMNS, [rows.rate_limit_row(put.parse(raw))]))
    return 0


async def rate_limit_list(args: argparse.Namespace, client: Client) -> int:
    listing = calls.list_rate_limits()
    return await show_listing(
        args, client, listing, rows.RATE_LIMIT_COLUMNS, lambda answer: map(rows.rate_limit_row, answer.rate_limits)
    )


async def rate_limit_delete(args: argparse.Namespace, client: Client) -> int:
    raw = await client.send_json(calls.delete_rate_limit(args.key))
    if args.json:
        print_json(raw)
    else:
        print(
            f"rate limit {args.key} deleted: its queued jobs start without it; "
            "new jobs naming it are refused until it is set again"
        )
    return 0
