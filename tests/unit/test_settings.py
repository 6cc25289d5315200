"""Settings from the environment, without servers: sections (`ORCH_<SECTION>__<FIELD>`), the
flat names that are a public contract, former flat names of fields moved into a section, the
errors a bad value gives, and the secrets a runner keeps from its jobs."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr, ValidationError

from orchestrator.bus import Bus
from orchestrator.bus.credentials import connect_options
from orchestrator.errors import ConfigurationError
from orchestrator.nats_servers import nats_servers
from orchestrator.settings import (
    MOVED,
    DispatchSettings,
    LeaderSettings,
    Settings,
    Timings,
    env_fields,
)
from services.runner.job_process import SECRET_ENV

# Documented, and set by deployments: these names must keep working as they are.
CONTRACT = [
    "ORCH_NATS_URL",
    "ORCH_DATABASE_URL",
    "ORCH_DATA_DIR",
    "ORCH_HTTP_HOST",
    "ORCH_HTTP_PORT",
    "ORCH_POOLS_FILE",
    "ORCH_RUNNER_SLOTS",
    "ORCH_RUNNER_LABELS",
    "ORCH_RUNNER_POOL",
    "ORCH_LOG_MAX_BYTES",
    "ORCH_LOG_RETENTION_S",
    "ORCH_RETENTION_S",
    "ORCH_KILL_GRACE_S",
    "ORCH_PRODUCER_TOKENS",
    "ORCH_RUNNER_TOKENS",
    "ORCH_OPERATOR_TOKENS",
    "ORCH_TENANT_TOKENS",
    "ORCH_NATS_USER",
    "ORCH_NATS_PASSWORD",
    "ORCH_NATS_TOKEN",
    "ORCH_NATS_CREDS_FILE",
    "ORCH_NATS_TLS_CA_FILE",
    "ORCH_NATS_TLS_CERT_FILE",
    "ORCH_NATS_TLS_KEY_FILE",
    "ORCH_NATS_HOST",
    "ORCH_NATS_PORT",
    "ORCH_LOG_TRANSITIONS",
    "ORCH_NAMESPACE",
    "ORCH_INSTANCE_ID",
    "ORCH_METRICS_PORT",
    "ORCH_NATS_REPLICAS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: none of the environment's own ORCH_* variables."""
    for name in list(os.environ):
        if name.upper().startswith("ORCH_"):
            monkeypatch.delenv(name)


def test_a_sectioned_variable_reaches_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DISPATCH__STEP_LIMIT", "64")
    monkeypatch.setenv("orch_provisioner__max_spawn", "3")  # case does not matter, as for flat names
    settings = Settings()
    assert settings.dispatch == DispatchSettings(step_limit=64)
    assert settings.provisioner.max_spawn == 3
    assert settings.leader == LeaderSettings()  # the others keep their defaults


@pytest.mark.parametrize("name", CONTRACT)
def test_the_public_flat_names_stay_flat_and_are_read(name: str) -> None:
    assert name in env_fields()


def test_flat_names_set_the_shared_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_KILL_GRACE_S", "3")
    monkeypatch.setenv("ORCH_NATS_USER", "orch")
    monkeypatch.setenv("ORCH_NATS_PASSWORD", "pw")
    monkeypatch.setenv("ORCH_HTTP_PORT", "9000")
    settings = Settings()
    assert settings.timings == Timings(kill_grace_s=3)
    credentials = settings.nats_credentials
    assert (credentials.nats_user, credentials.nats_password) == ("orch", SecretStr("pw"))
    assert settings.http.http_port == 9000
    with pytest.raises(ValidationError):  # a service's copy is its own
        settings.timings.kill_grace_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "section"), sorted(MOVED.items()))
def test_a_former_flat_name_still_sets_the_field_in_its_section(
    monkeypatch: pytest.MonkeyPatch, name: str, section: str
) -> None:
    value = 7 if name != "lease_renew_s" else 1.5
    monkeypatch.setenv(f"ORCH_{name.upper()}", str(value))
    if name == "lease_renew_s":  # must stay under the TTL
        monkeypatch.setenv("ORCH_LEADER__LEASE_TTL_S", "3")
    assert getattr(getattr(Settings(), section), name) == value
    assert getattr(getattr(Settings(**{name: value}), section), name) == value  # as a keyword too


def test_the_sectioned_name_wins_over_the_former_flat_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LEASE_TTL_S", "5")
    monkeypatch.setenv("ORCH_LEASE_RENEW_S", "1")
    monkeypatch.setenv("ORCH_LEADER__LEASE_TTL_S", "4")
    assert Settings().leader == LeaderSettings(lease_ttl_s=4, lease_renew_s=1)


def test_a_bad_sectioned_value_names_its_field_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DISPATCH__STEP_LIMIT", "abc")
    with pytest.raises(ValidationError, match=r"dispatch\.step_limit"):
        Settings()
    with pytest.raises(ConfigurationError, match="ORCH_DISPATCH__STEP_LIMIT: Input should be a valid integer"):
        Settings.from_env()


def test_the_retention_is_read_and_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().retention.retention_s == 7 * 24 * 3600  # a week by default
    monkeypatch.setenv("ORCH_RETENTION_S", "86400")
    monkeypatch.setenv("ORCH_CAPACITY__PRUNE_BATCH", "100")
    settings = Settings.from_env()
    assert (settings.retention.retention_s, settings.capacity.prune_batch) == (86400, 100)
    for bad in ("0", "-1", "a week"):
        monkeypatch.setenv("ORCH_RETENTION_S", bad)
        with pytest.raises(ConfigurationError, match="ORCH_RETENTION_S: "):
            Settings.from_env()


def test_tenant_tokens_are_tenant_equals_token_and_a_bad_one_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_TENANT_TOKENS", " acme=s1 ,globex=s2")
    http = Settings.from_env().http
    assert http.tenant_bound_tokens() == [("acme", "s1"), ("globex", "s2")]
    assert ("producer", "s1") in http.api_tokens()  # a tenant's token is a producer's
    for bad in ("acme:s1", "acme=", "=s1", "no spaces=s1"):
        monkeypatch.setenv("ORCH_TENANT_TOKENS", bad)
        with pytest.raises(ConfigurationError, match=r"ORCH_TENANT_TOKENS: .*TENANT=TOKEN") as raised:
            Settings.from_env()
        assert "s1" not in str(raised.value)


def test_a_misspelt_sectioned_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DISPATCH__STEP_LIMT", "64")
    with pytest.raises(ConfigurationError, match="ORCH_DISPATCH__STEP_LIMT: Extra inputs are not permitted"):
        Settings.from_env()


def test_a_section_checks_its_fields_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LEASE_RENEW_S", "5")  # a former name, over the default TTL of 2
    with pytest.raises(ConfigurationError, match=r"ORCH_LEADER: .*lease_renew_s \(5.0\) must be under lease_ttl_s"):
        Settings.from_env()


def test_the_error_does_not_show_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_HTTP_PORT", "s3cret-looking")
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env()
    assert "ORCH_HTTP_PORT" in str(raised.value) and "s3cret" not in str(raised.value)


def test_secret_env_lists_every_secret_field() -> None:
    secret_str = {
        name
        for name, field in env_fields().items()
        if field.annotation in (SecretStr, SecretStr | None)  # the declared kinds of secret
    }
    assert secret_str == {
        "ORCH_NATS_PASSWORD",
        "ORCH_NATS_TOKEN",
        "ORCH_PRODUCER_TOKENS",
        "ORCH_RUNNER_TOKENS",
        "ORCH_OPERATOR_TOKENS",
        "ORCH_TENANT_TOKENS",
    }
    assert secret_str <= SECRET_ENV
    # Not SecretStr, but access all the same (a URL's password, a key), and the CLI's own token.
    assert {
        "ORCH_DATABASE_URL",
        "ORCH_NATS_URL",
        "ORCH_NATS_CREDS_FILE",
        "ORCH_NATS_TLS_KEY_FILE",
        "ORCH_TOKEN",
    } <= SECRET_ENV
    assert not {"ORCH_NATS_USER", "ORCH_HTTP_PORT", "ORCH_URL", "ORCH_RUNNER_TTL_S"} & SECRET_ENV


def test_the_nats_prefixes_reach_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner of compose: its replies under its own inbox prefix, the JetStream API under its
    account's import (deploy/nats.conf); by default nats-py's own."""
    assert connect_options(Settings().nats_credentials)["inbox_prefix"] == "_INBOX"
    monkeypatch.setenv("ORCH_NATS_INBOX_PREFIX", "_INBOX_runner-1")
    monkeypatch.setenv("ORCH_NATS_JS_API_PREFIX", "$JS.ORCH.API")
    settings = Settings(nats_url="nats://127.0.0.1:4222")
    assert connect_options(settings.nats_credentials)["inbox_prefix"] == "_INBOX_runner-1"
    assert Bus.from_settings(settings, name="t").js_api_prefix == "$JS.ORCH.API"


@pytest.mark.parametrize("prefix", ["_INBOX.>", "_INBOX.*", "_INBOX.", ".x", "a..b", "a b", ""])
def test_a_nats_prefix_must_be_literal_subject_tokens(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    for variable in ("ORCH_NATS_INBOX_PREFIX", "ORCH_NATS_JS_API_PREFIX"):
        monkeypatch.setenv(variable, prefix)
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env()
        monkeypatch.delenv(variable)


def test_nats_url_lists_the_nodes_of_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_NATS_URL", "nats://n1:4222, nats://u:pw@n2:4222,tls://n3:4222")
    url = Settings.from_env().nats_url
    assert url is not None
    assert nats_servers(url) == ["nats://n1:4222", "nats://u:pw@n2:4222", "tls://n3:4222"]
    assert nats_servers("127.0.0.1:4222") == ["127.0.0.1:4222"]  # nats-py reads it as nats://


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("nats://n1:4222,,nats://n3:4222", "server 2 of 3 is empty"),
        ("nats://n1:4222,", "server 2 of 2 is empty"),
        ("http://u:s3cret@n1:4222", "the server has the scheme 'http'"),
        ("nats://n1:4222,nats://n2:42x2", "server 2 of 2 has a port that is not a number"),
        ("nats://:4222", "the server names no host"),
        ("nats://n1:4222,ws://n2:8080", "mix websocket"),
    ],
)
def test_a_bad_nats_server_list_names_the_server_that_is_wrong_and_hides_it(
    monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    monkeypatch.setenv("ORCH_NATS_URL", url)
    with pytest.raises(ConfigurationError, match=f"ORCH_NATS_URL: Value error, .*{why}") as raised:
        Settings.from_env()
    assert "s3cret" not in str(raised.value) and "n2" not in str(raised.value)


@pytest.mark.parametrize("replicas", ["0", "6", "three"])
def test_nats_replicas_are_1_to_5(monkeypatch: pytest.MonkeyPatch, replicas: str) -> None:
    monkeypatch.setenv("ORCH_NATS_REPLICAS", replicas)
    with pytest.raises(ConfigurationError, match="ORCH_NATS_REPLICAS"):
        Settings.from_env()
    monkeypatch.setenv("ORCH_NATS_REPLICAS", "3")
    assert Settings.from_env().nats_replicas == 3
