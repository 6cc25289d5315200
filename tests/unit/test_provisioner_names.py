"""A provisioner's name resolves to a factory, or to a ConfigurationError saying why not: whatever
the named module's import raises, and whatever the name turns out to be (the API refuses a pool
such a name with 422, the provisioner service refuses to start on one: neither may crash)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.provisioning import resolve


def test_a_module_whose_import_fails_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleet_broken_at_import.py").write_text("raise RuntimeError('no cloud credentials')\n")
    (tmp_path / "fleet_exits_at_import.py").write_text("raise SystemExit(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="cannot be loaded: RuntimeError: no cloud credentials"):
        resolve("fleet_broken_at_import:factory", {})
    with pytest.raises(ConfigurationError, match="cannot be loaded: SystemExit"):
        resolve("fleet_exits_at_import:factory", {})


def test_a_name_that_is_no_factory_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'os:sep' is not a factory: it is a str"):
        resolve("os:sep", {})


def test_a_factory_resolves() -> None:
    def factory(ctx: object) -> object:
        return ctx

    assert resolve("mine", {"mine": factory}) is factory
    assert resolve("os.path:join", {}) is __import__("os").path.join
