"""One owner for the job state machine (issue 15): the SQL that changes a job's state lives in
`queries/transitions.sql` and is run only by the `orchestrator/store/transitions` package, and no other
product module publishes a job event itself (the outbox relay does)."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

from orchestrator.bus import Subjects
from orchestrator.bus.topics import JobNews
from orchestrator.store.queries import Q, parse

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [p for folder in ("orchestrator", "services", "schemas") for p in (ROOT / folder).rglob("*.py")]
OWNER = ROOT / "orchestrator" / "store" / "transitions"
# A write to the jobs table that sets or creates its state.
_STATE_WRITE = re.compile(
    r"INSERT\s+INTO\s+jobs\b|UPDATE\s+jobs\b[^;]*?\bSET\b[^;]*?\bstate\s*=", re.IGNORECASE | re.DOTALL
)


def _transition_queries() -> dict[str, str]:
    return parse((resources.files("orchestrator.store") / "queries" / "transitions.sql").read_text())


def test_every_state_changing_query_is_a_transition() -> None:
    owned = _transition_queries()
    elsewhere = sorted(name for name, sql in Q.items() if _STATE_WRITE.search(sql) and name not in owned)
    assert elsewhere == [], f"queries that change a job's state outside transitions.sql: {elsewhere}"
    # The rest call a function that changes state (below), record what goes with a state (an
    # ack, a pending cancel, a heartbeat that lacked the job) or read what a runner must stop.
    companions = {"job_claim_step", "job_acknowledge_many", "job_cancel_request", "job_mark_unheld", "job_stop_orders"}
    assert {name for name, sql in owned.items() if not _STATE_WRITE.search(sql)} <= companions


def test_a_function_that_changes_a_jobs_state_is_called_by_transitions_only() -> None:
    """An edge written as a SQL function (the claim, migration 0009) is owned all the same."""
    schema = (resources.files("orchestrator.store") / "schema.sql").read_text()
    bodies = re.findall(r"CREATE FUNCTION (\w+)\(.*?\$\$(.*?)\$\$", schema, re.DOTALL)
    writers = {name for name, body in bodies if _STATE_WRITE.search(body)}
    owned = _transition_queries()
    callers = {name for name, sql in Q.items() for f in writers if re.search(rf"\b{f}\(", sql)}
    assert writers == {"claim_step"}
    assert callers <= set(owned)


def test_only_the_transitions_module_runs_them() -> None:
    names = set(_transition_queries())
    users = {
        str(path.relative_to(ROOT)): sorted(n for n in names if f'"{n}"' in path.read_text())
        for path in PRODUCT
        if OWNER not in path.parents
    }
    assert {path: found for path, found in users.items() if found} == {}


def test_no_module_publishes_a_job_event_itself() -> None:
    """Job events leave through the outbox: no call publishes on a job-news topic it names."""
    news = {name for name, topic in Subjects.declared().items() if isinstance(topic, JobNews)}
    publishers = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path in PRODUCT
        for call in ast.walk(ast.parse(path.read_text()))
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and "publish" in call.func.attr
        if any(isinstance(node, ast.Attribute) and node.attr in news for arg in call.args for node in ast.walk(arg))
    ]
    assert news and publishers == []
