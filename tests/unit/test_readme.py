"""The README is self-contained (issue 20, point 8): a reader has the clone and nothing around
it, so every file it names is in the repository and every link within it leads to a heading."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Files the README names that are not in a clone, because something makes them: why.
MADE = {
    "bench/peers/graphile/node_modules": "the benchmark installs graphile-worker there on first use",
    "deploy/secrets.env": "the reader makes it from deploy/secrets.env.example",
}
# A path in backquotes: one of the repository's folders, or a way out of the clone.
NAMED = re.compile(r"`((?:\.\./|app/|bench/|deploy/|docs/|orchestrator/|schemas/|services/|tests/)[^`\s]*)`")


def slug(heading: str) -> str:
    """A heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def in_clone(path: str) -> bool:
    """Whether the clone has it (a pattern: something that matches). What lies outside the clone
    does not count, even where this machine has it (`../shared/DESIGN.md` once)."""
    inside = (ROOT / path.split("*")[0]).resolve().is_relative_to(ROOT)
    return inside and any(ROOT.glob(path.rstrip("/")))


def test_every_file_the_readme_names_is_in_the_clone() -> None:
    text = README.read_text()
    named = set(NAMED.findall(text)) | {t for t in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in t}
    missing = sorted(p for p in named if p not in MADE and not in_clone(p))
    assert not missing, f"README.md names what a clone does not have: {missing}"


def test_every_link_within_the_readme_leads_to_a_heading() -> None:
    text = README.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # a shell comment is no heading
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", prose, re.MULTILINE)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors)
    assert not broken, f"README.md links to no heading: {broken}"
