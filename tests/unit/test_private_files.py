"""The embedded stack's secrets and the endpoints file (issue 21, item 3): readable by their owner
only from their creation, generated once, and refused, untouched, when others could read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app import endpoints
from orchestrator import private_files
from orchestrator.errors import ConfigurationError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_generated_once_into_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    file = tmp_path / "data" / "nats.token"
    first = private_files.secret(file)
    assert len(first) >= 32 and mode(file) == 0o600
    assert private_files.secret(file) == first
    assert [p.name for p in file.parent.iterdir()] == ["nats.token"]  # no temporary file left


def test_a_secret_others_could_read_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    file = tmp_path / "nats.token"
    file.write_text("known-to-others\n")
    file.chmod(0o644)
    with pytest.raises(ConfigurationError, match=r"nats\.token is readable by others \(mode 0644"):
        private_files.secret(file)
    assert (file.read_text(), mode(file)) == ("known-to-others\n", 0o644)


def test_an_empty_secret_file_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    file = tmp_path / "postgres.password"
    private_files.write(file, "")
    with pytest.raises(ConfigurationError, match="is empty"):
        private_files.secret(file)


def test_a_secret_file_is_not_replaced_by_a_second_writer(tmp_path: Path) -> None:
    file = tmp_path / "nats.token"
    private_files.write(file, "first\n", replace=False)
    with pytest.raises(FileExistsError):
        private_files.write(file, "second\n", replace=False)
    assert private_files.read(file) == "first\n"


def test_the_endpoints_file_is_its_owners_only_and_carries_the_nats_token(tmp_path: Path) -> None:
    """An endpoints file left readable by an earlier version is replaced by a private one."""
    old = endpoints.path(tmp_path)
    old.write_text("{}")
    old.chmod(0o644)
    written = endpoints.Endpoints(
        http="http://127.0.0.1:1",
        nats="nats://127.0.0.1:2",
        database="postgresql://postgres:pw@/postgres?host=/x",
        nats_token="tok-secret",
    )
    endpoints.write(tmp_path, written)
    assert mode(old) == 0o600
    found = endpoints.read(tmp_path)
    assert found is not None and found.nats_token is not None
    assert found.nats_token.get_secret_value() == "tok-secret"
    shown = found.shown()
    assert "tok-secret" not in shown and ":pw@" not in shown
    assert (
        shown == "http=http://127.0.0.1:1 nats=nats://127.0.0.1:2 database=postgresql://postgres:***@/postgres?host=/x"
    )
