"""The open-door rule (orchestrator/exposure.py): which hosts are loopback, and what serving the
api elsewhere with no token does, with and without ORCH_ALLOW_INSECURE. The CLI's exit status and
message on a real start are in tests/system/test_open_door.py."""

from __future__ import annotations

import pytest

from app.runtime import Runtime
from orchestrator.errors import ConfigurationError
from orchestrator.exposure import is_loopback, open_door
from orchestrator.settings import HttpSettings, Settings

TOKEN_VARIABLES = ("ORCH_PRODUCER_TOKENS", "ORCH_RUNNER_TOKENS", "ORCH_OPERATOR_TOKENS", "ORCH_ALLOW_INSECURE")


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1",
     "localhost", "LocalHost", "localhost."],
)  # fmt: skip
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "[::]", "", "10.0.0.5", "192.168.1.1", "128.0.0.1", "::ffff:10.0.0.1", "fe80::1",
     "2001:db8::1", "example.com", "localhost.example.com", "my-localhost", "127.0.0.1.nip.io", "127.1"],
)  # fmt: skip
def test_every_other_host_is_open(host: str) -> None:
    assert not is_loopback(host)


def http(host: str, **fields: object) -> HttpSettings:
    return HttpSettings.model_validate({"http_host": host, "http_port": 8080, **fields})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "api.example.com"])
def test_serving_beyond_loopback_with_no_token_is_refused_naming_every_way_out(host: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        open_door(http(host))
    message = str(refused.value)
    assert f"{host}:8080" in message
    assert [v for v in TOKEN_VARIABLES if v not in message] == []
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize("blank", ["", " ", " , ,"])
def test_blank_tokens_are_no_tokens(blank: str) -> None:
    with pytest.raises(ConfigurationError):
        open_door(http("0.0.0.0", producer_tokens=blank, runner_tokens=blank, operator_tokens=blank))


@pytest.mark.parametrize("role", ["producer_tokens", "runner_tokens", "operator_tokens"])
def test_any_role_token_closes_the_door(role: str) -> None:
    assert open_door(http("0.0.0.0", **{role: "tok-1"})) is None


def test_loopback_needs_no_token() -> None:
    assert open_door(http("127.0.0.1")) is None
    assert open_door(http("localhost", allow_insecure=True)) is None  # nothing to warn about


def test_allow_insecure_serves_with_a_warning_saying_it_is_open() -> None:
    warning = open_door(http("0.0.0.0", allow_insecure=True))
    assert warning is not None
    assert "0.0.0.0:8080" in warning and "open to anyone who reaches the address" in warning


def test_allow_insecure_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_ALLOW_INSECURE", "true")
    assert Settings().allow_insecure is True
    monkeypatch.setenv("ORCH_ALLOW_INSECURE", "maybe")
    with pytest.raises(ConfigurationError, match="ORCH_ALLOW_INSECURE"):
        Settings.from_env()


def test_only_a_process_serving_the_api_is_held_to_it() -> None:
    """A runner or a service without the api may run with ORCH_HTTP_HOST=0.0.0.0 (the image's
    default); the api in the same settings is refused before anything starts."""
    settings = Settings(nats_url="nats://127.0.0.1:1", database_url="postgresql://x@/x", http_host="0.0.0.0")
    Runtime(settings, ["admission", "capacity", "dispatch"])
    with pytest.raises(ConfigurationError, match="ORCH_OPERATOR_TOKENS"):
        Runtime(settings, ["admission", "api"])
