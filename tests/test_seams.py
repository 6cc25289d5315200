"""The seams are sealed (issue 18): only `orchestrator/bus` talks to NATS and only
`orchestrator/store` to Postgres. Services get typed events, a `Delivery` for the intake, and
the bus's and store's own methods; this test parses every product module's imports (and its
reach into the bus's clients) and names each breach."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = sorted(p for folder in ("orchestrator", "services", "schemas") for p in (ROOT / folder).rglob("*.py"))
# A library, and the one package that may import it.
SEALED = {"nats": ROOT / "orchestrator" / "bus", "asyncpg": ROOT / "orchestrator" / "store"}
# The bus's NATS clients, reached as `<bus>.nc` / `<bus>.js`.
CLIENTS = {"nc", "js"}


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_bus_imports_nats_and_only_the_store_imports_asyncpg() -> None:
    breaches = [
        f"{path.relative_to(ROOT)} imports {library}"
        for path in PRODUCT
        for library in sorted(imported(ast.parse(path.read_text())) & set(SEALED))
        if SEALED[library] not in path.parents
    ]
    assert breaches == []


def test_nothing_outside_the_bus_reaches_into_its_nats_clients() -> None:
    bus = SEALED["nats"]
    breaches = [
        f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}"
        for path in PRODUCT
        if bus not in path.parents
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in CLIENTS
    ]
    assert breaches == []
