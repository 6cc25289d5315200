"""How the commands of a data dir find the system `up` runs there, without servers: the embedded
NATS's port kept across starts (`nats_port`), and the endpoints file (`app/endpoints.py`)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import endpoints
from orchestrator.bus import Bus
from orchestrator.embedded import EmbeddedNats, nats_port
from orchestrator.errors import ConfigurationError
from orchestrator.nats_servers import nats_servers
from orchestrator.settings import Settings

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ORCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        yield s


def test_the_port_is_kept_across_starts_while_it_is_free(tmp_path: Path) -> None:
    memory = tmp_path / "nats_port"
    first = nats_port(memory, HOST)
    assert memory.read_text().strip() == str(first)
    assert nats_port(memory, HOST) == first


def test_a_port_taken_meanwhile_is_replaced_and_said(
    tmp_path: Path, listening: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    memory = tmp_path / "nats_port"
    taken = listening.getsockname()[1]
    memory.write_text(f"{taken}\n")
    with caplog.at_level(logging.WARNING, logger="orchestrator.embedded"):
        port = nats_port(memory, HOST)
    assert port != taken
    assert memory.read_text().strip() == str(port)  # the new one, for the next start
    assert [r.getMessage() for r in caplog.records] == [
        f"the embedded NATS cannot have port {taken} again (in use): it listens on {port} now; "
        "runners started with the old address must be told the new one"
    ]


def test_a_set_port_is_used_and_one_in_use_is_an_error_naming_it(tmp_path: Path, listening: socket.socket) -> None:
    memory = tmp_path / "nats_port"
    free = nats_port(tmp_path / "elsewhere", HOST)
    assert nats_port(memory, HOST, free) == free
    taken = listening.getsockname()[1]
    with pytest.raises(ConfigurationError, match=f"ORCH_NATS_PORT={taken}: {HOST}:{taken} is in use"):
        nats_port(memory, HOST, taken)
    assert memory.read_text().strip() == str(free)  # unchanged


def test_an_unreadable_memory_means_a_new_port(tmp_path: Path) -> None:
    memory = tmp_path / "nats_port"
    memory.write_text("not a port\n")
    port = nats_port(memory, HOST)
    assert memory.read_text().strip() == str(port)


def test_nats_host_and_port_are_settings_with_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_NATS_HOST", "0.0.0.0")
    monkeypatch.setenv("ORCH_NATS_PORT", "4333")
    settings = Settings.from_env()
    assert (settings.nats_host, settings.nats_port) == ("0.0.0.0", 4333)
    monkeypatch.setenv("ORCH_NATS_PORT", "70000")
    with pytest.raises(ConfigurationError, match="ORCH_NATS_PORT: Input should be less than or equal to 65535"):
        Settings.from_env()


def test_an_embedded_nats_on_every_interface_is_reached_on_loopback(tmp_path: Path) -> None:
    assert EmbeddedNats(tmp_path, host="0.0.0.0", port=4333).url == "nats://127.0.0.1:4333"
    assert EmbeddedNats(tmp_path, host="::", port=4333).url == "nats://[::1]:4333"
    assert EmbeddedNats(tmp_path, host="10.1.2.3", port=4333).url == "nats://10.1.2.3:4333"


def test_a_command_joins_the_system_of_its_data_dir_when_no_nats_is_set(tmp_path: Path) -> None:
    written = endpoints.Endpoints(http="http://127.0.0.1:8080", nats="nats://127.0.0.1:4333", database="postgresql://x")
    endpoints.write(tmp_path, written)
    assert endpoints.path(tmp_path).stat().st_mode & 0o777 == 0o600
    joined = endpoints.joined(Settings(data_dir=tmp_path))
    assert (joined.nats_url, joined.database_url) == (written.nats, written.database)
    # A set NATS wins, and keeps the system it names whole; a set database is kept.
    assert endpoints.joined(Settings(data_dir=tmp_path, nats_url="nats://other:4222")).database_url is None
    assert endpoints.joined(Settings(data_dir=tmp_path, database_url="postgresql://y")).database_url == "postgresql://y"


def test_a_cluster_in_the_endpoints_file_is_joined_whole(tmp_path: Path) -> None:
    """`serve api` against a NATS cluster writes every node; a runner of that data dir joins them all."""
    cluster = "nats://n1:4222,nats://n2:4222,nats://n3:4222"
    endpoints.write(tmp_path, endpoints.Endpoints(http="http://127.0.0.1:8080", nats=cluster))
    joined = endpoints.joined(Settings(data_dir=tmp_path))
    assert joined.nats_url == cluster
    assert nats_servers(joined.nats_url) == cluster.split(",")
    assert Bus.from_settings(joined, name="runner").url == cluster


def test_without_an_endpoints_file_settings_stay_as_they_are(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert endpoints.joined(settings) is settings


def test_a_bad_endpoints_file_is_an_error_naming_it(tmp_path: Path) -> None:
    endpoints.path(tmp_path).write_text('{"nats": 42}')
    with pytest.raises(ConfigurationError, match=f"{endpoints.path(tmp_path)} is not an endpoints file"):
        endpoints.joined(Settings(data_dir=tmp_path))
