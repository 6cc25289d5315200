"""Named SQL queries, loaded once from the `.sql` files beside this module.

Each query is headed by `-- name: <table>_<verb>`; comments above a header document the query.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = "\n".join(lines).strip()
    return queries


def load() -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files("orchestrator.store") / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse(entry.read_text()).items():
                if name in queries:
                    raise ValueError(f"query {name!r} is defined twice")
                queries[name] = sql
    return queries


Q = load()
