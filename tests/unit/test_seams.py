"""The layers and the seams (issue 18), checked by parsing every product module's imports, those
inside functions included (a deferred import still closes a circle):
- `schemas` imports only itself; `orchestrator` (the core) imports `schemas`, never `services` nor
  `app`; a service imports the core, `schemas` and its own modules, never another service nor
  `app`; `app` (the composition root) may import anything.
- no import circle between any two product modules;
- the Python client (`orchestrator/client`) imports only itself and `schemas` of the product: a
  program uses it without loading the server's core;
- only `orchestrator/bus` talks to NATS and only `orchestrator/store` to Postgres: services get
  typed events, a `Delivery` for the intake, and the bus's and store's own methods.
Each test names every breach."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("app", "orchestrator", "services", "schemas")
PRODUCT = sorted(p for folder in LAYERS for p in (ROOT / folder).rglob("*.py"))
# A library, and the one package that may import it.
SEALED = {"nats": ROOT / "orchestrator" / "bus", "asyncpg": ROOT / "orchestrator" / "store"}
# The bus's NATS clients, reached as `<bus>.nc` / `<bus>.js`.
CLIENTS = {"nc", "js"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PRODUCT}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:`: for annotations, never executed."""
    return {
        node.lineno
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and isinstance(branch.test, ast.Name) and branch.test.id == "TYPE_CHECKING"
        for stmt in branch.body
        for node in ast.walk(stmt)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import the module executes; `from a import b` names `a.b` when
    that is a module of the product, else `a`. (The product uses no relative imports.)"""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and node.lineno not in skipped:
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.lineno not in skipped:
            assert node.level == 0 and node.module, f"{path}:{node.lineno}: a relative import"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield node.lineno, name if name in MODULES else node.module


# What each layer may import of the others (a service: also its own modules, see `allowed`).
MAY_IMPORT = {
    "schemas": {"schemas"},
    "orchestrator": {"orchestrator", "schemas"},
    "services": {"orchestrator", "schemas"},
}


def allowed(importer: str, imported: str) -> bool:
    layer, top = importer.split(".")[0], imported.split(".")[0]
    if top not in LAYERS or layer == "app":
        return True
    if layer == "services" and top == "services":  # its own package or module only
        return imported.split(".")[:2] == importer.split(".")[:2]
    return (
        top
        in {
            "schemas": {"schemas"},
            "orchestrator": {"orchestrator", "schemas"},
            "services": {"orchestrator", "schemas"},
        }[layer]
    )


def test_every_layer_imports_only_what_it_may() -> None:
    breaches = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in PRODUCT
        for line, name in imports(path)
        if not allowed(module_name(path), name)
    ]
    assert breaches == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


CLIENT = ROOT / "orchestrator" / "client"


def client_may_import(imported: str) -> bool:
    top = imported.split(".")[0]
    return top not in LAYERS or top == "schemas" or imported.startswith("orchestrator.client")


def test_the_client_imports_only_itself_and_schemas() -> None:
    breaches = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(CLIENT.rglob("*.py"))
        for line, name in imports(path)
        if not client_may_import(name)
    ]
    assert CLIENT.is_dir() and breaches == []


def test_no_import_circle() -> None:
    graph = {name: {m for _, m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    assert _circles(graph) == []


def test_the_checks_see_a_breach() -> None:
    """The two checks above fail on what they guard against."""
    assert not allowed("orchestrator.provisioning", "app.cli")
    assert not allowed("services.dispatch", "services.runner")
    assert allowed("services.runner.agent", "services.runner.job_process")
    assert not client_may_import("orchestrator.settings") and client_may_import("orchestrator.client.calls")
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_bus_imports_nats_and_only_the_store_imports_asyncpg() -> None:
    breaches = [
        f"{path.relative_to(ROOT)} imports {library}"
        for path in PRODUCT
        for library in sorted({name.split(".")[0] for _, name in imports(path)} & set(SEALED))
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
