"""Settings from `ORCH_*` environment variables, one model for every process."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.redact import url_secrets


def default_runner_labels() -> str:
    return f"{platform.system().lower()},{platform.machine().lower()}"


def default_instance_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in platform.node() or "local")[:40]
    return f"{host or 'local'}-{os.getpid()}"


# How long a runner waits for capacity's answer to a request (register, start, finish). The
# server's own timeout of a job allows for it: the runner's clock for a job starts only when the
# answer granting its start arrives.
RUNNER_REQUEST_TIMEOUT_S = 5.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    # Where the servers are. Unset in `up`: the embedded stack starts its own.
    nats_url: str | None = None
    database_url: str | None = None
    # NATS credentials, when the server asks for them: a user and password, a token, or a
    # credentials file (JWT + NKey seed, as `nsc` writes it). TLS: a `tls://` URL, or any of the
    # files below (the CA to trust a private server; a client certificate and key for mutual TLS).
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    data_dir: Path = Path(".orchestrator")

    # The first token of every subject and stream name. Tests give each test its own.
    namespace: str = Field(default="orch", pattern=r"^[a-z][a-z0-9_]{0,31}$")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # A process without the api (`serve dispatch`, `serve admission`) serves its own counters at
    # GET /metrics on this port when set; with the api they are on the api's /metrics.
    metrics_port: int | None = None
    # Bodies past this answer 413 before they are parsed.
    max_body_bytes: int = 1_048_576

    pools_file: Path | None = None
    runner_pool: str = "default"
    runner_slots: int = 4
    runner_labels: str = Field(default_factory=default_runner_labels)

    db_pool_size: int = 10
    # A runner that sends no heartbeat for this long is lost; its jobs are requeued.
    heartbeat_interval_s: float = 2.0
    runner_ttl_s: float = 10.0
    # The runner must ack an assignment within this; otherwise the job goes back to the queue.
    assign_ack_timeout_s: float = 2.0
    # The safety sweep: events can be lost, Postgres is the truth.
    sweep_interval_s: float = 5.0
    stop_timeout_s: float = 10.0
    # A cancelled or timed-out job's process group gets SIGTERM, then SIGKILL this much later
    # (its cleanup traps run). The server ends a job that ran past timeout_s by this plus a
    # heartbeat interval when its runner has not reported.
    kill_grace_s: float = Field(default=10.0, ge=0)
    # Job output (issue 17): a job's log keeps at most this many bytes per attempt, its first and
    # last halves (the middle is dropped, and a reader is shown a marker saying how much), and is
    # kept this long after it was written.
    log_max_bytes: int = Field(default=16 * 1024 * 1024, ge=2 * 64 * 1024)
    log_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # All jobs' output together at most (the oldest goes first). Unset: bounded by age only.
    # JetStream books this much of its disk for the stream up front, and refuses a stream it
    # has no room for: set it within the NATS server's file store.
    log_store_max_bytes: int | None = Field(default=None, gt=0)
    # A runner that cannot store a chunk of output for this long drops the rest of the attempt's
    # output (with a warning) rather than hold the job's end report.
    log_ship_timeout_s: float = Field(default=60.0, gt=0)
    # An assignment its runner has not started after this long (the dispatcher died mid hand-off,
    # or the runner's start request failed) goes back to the queue. Longer than the ack timeout.
    assigned_stale_s: float = 15.0
    # Postgres ends a session idle inside a transaction for this long: a paused (SIGSTOP) or
    # partitioned ex-leader must not hold the epoch and pool row locks its successor needs.
    db_idle_in_transaction_s: float = 10.0
    # Leader-mode pools (seed 002): capacity re-elects on every runner change, and every pool on this
    # timer in case an event was lost.
    leader_check_interval_s: float = Field(default=60.0, gt=0)

    # Leader election (services/leader.py): every dispatch instance contends for the lease of its
    # shard, a NATS KV key with a per-message TTL (whole seconds, at least 1), renewed well inside
    # it. The holder stops dispatching on its own clock if no renewal succeeds within the TTL.
    dispatch_shard: str = Field(default="all", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    lease_ttl_s: int = Field(default=2, ge=1)
    lease_renew_s: float = Field(default=0.5, gt=0)
    # Who this process is in `GET /v1/leader`, events and the lease value.
    instance_id: str = Field(default_factory=default_instance_id, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")

    # HTTP API bearer tokens by role (comma-separated). None set: auth is off (the embedded
    # default); any set: every route but the public ones needs a token of a role it allows.
    producer_tokens: SecretStr = SecretStr("")
    runner_tokens: SecretStr = SecretStr("")
    operator_tokens: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _client_cert_with_key(self) -> Settings:
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("set both nats_tls_cert_file and nats_tls_key_file (mutual TLS), or neither")
        return self

    @model_validator(mode="after")
    def _renew_inside_ttl(self) -> Settings:
        if self.lease_renew_s >= self.lease_ttl_s:
            raise ValueError(f"lease_renew_s ({self.lease_renew_s}) must be under lease_ttl_s ({self.lease_ttl_s})")
        return self

    def runner_label_list(self) -> list[str]:
        return [label for label in (s.strip() for s in self.runner_labels.split(",")) if label]

    def api_tokens(self) -> list[tuple[str, str]]:
        """(role, token) for every configured API token."""
        by_role = {"producer": self.producer_tokens, "runner": self.runner_tokens, "operator": self.operator_tokens}
        listed = [(role, tokens.get_secret_value().split(",")) for role, tokens in by_role.items()]
        return [(role, t.strip()) for role, tokens in listed for t in tokens if t.strip()]

    def secret_values(self) -> list[str]:
        """Every secret this process knows, for the log redactor: tokens, passwords (also those
        inside the URLs)."""
        values = [token for _, token in self.api_tokens()]
        values += [s.get_secret_value() for s in (self.nats_password, self.nats_token) if s is not None]
        for url in (self.nats_url, self.database_url):
            values += url_secrets(url or "")
        return values
