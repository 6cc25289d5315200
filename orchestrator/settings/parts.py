"""The parts `Settings` is made of: groups of flat fields several services share, and one
section per service with knobs of its own. Each service takes only the parts it reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class Credential:
    """Marks a field that grants access without being a SecretStr (a URL that may hold a password,
    the path of a key): kept out of jobs' environment like the SecretStr fields."""


CREDENTIAL = Credential()


class Group(BaseModel):
    """Flat fields several services read. `Settings` inherits every group (so their variables have
    no section); `Settings.cut` gives a service its own frozen copy of one."""

    model_config = ConfigDict(frozen=True)


class Section(BaseModel):
    """The knobs of one service, `ORCH_<SECTION>__<FIELD>`. An unknown key is refused: a misspelt
    variable fails start-up instead of being ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- groups: flat, shared ------------------------------------------------------------------------

# Literal NATS subject tokens (no wildcards, no empty token): a prefix subjects are built on.
SUBJECT_PREFIX = r"^[$A-Za-z0-9_-]+(\.[$A-Za-z0-9_-]+)*$"


class NatsCredentials(Group):
    # When the NATS server asks for them: a user and password, a token, or a credentials file
    # (JWT + NKey seed, as `nsc` writes it). TLS: a `tls://` URL, or any of the files below (the CA
    # to trust a private server; a client certificate and key for mutual TLS).
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds_file: Annotated[Path | None, CREDENTIAL] = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Annotated[Path | None, CREDENTIAL] = None
    # Where this client's replies come: `<prefix>.<unique>`. A NATS user allowed to read only its
    # own prefix cannot read another's replies (compose's runners: `_INBOX_<runner id>`).
    nats_inbox_prefix: str = Field(default="_INBOX", pattern=SUBJECT_PREFIX)
    # The JetStream API as this client's account sees it: another prefix where the account
    # imports the API from the account that has the streams (compose's runners: `$JS.ORCH.API`).
    nats_js_api_prefix: str = Field(default="$JS.API", pattern=SUBJECT_PREFIX)

    @model_validator(mode="after")
    def _client_cert_with_key(self) -> NatsCredentials:
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("set both nats_tls_cert_file and nats_tls_key_file (mutual TLS), or neither")
        return self


class Timings(Group):
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


class LogLimits(Group):
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


class Retention(Group):
    # Finished jobs (and with them their idempotency keys), rejections, and runners and workers
    # gone for good are deleted once older than this; job shapes as soon as no live job uses them.
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)


class HttpSettings(Group):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # HTTP API bearer tokens by role (comma-separated). None set: auth is off (the embedded
    # default); any set: every route but the public ones needs a token of a role it allows.
    producer_tokens: SecretStr = SecretStr("")
    runner_tokens: SecretStr = SecretStr("")
    operator_tokens: SecretStr = SecretStr("")
    # Producer tokens bound to a tenant, `TENANT=TOKEN` comma-separated: their jobs are that
    # tenant's, and they see and cancel no other tenant's jobs (services/api/tenancy.py).
    tenant_tokens: SecretStr = SecretStr("")
    # Serve the api beyond loopback with no token anyway (orchestrator/exposure.py): refused
    # at start unless this is set, and warned about at every start when it is.
    allow_insecure: bool = False

    @field_validator("tenant_tokens")
    @classmethod
    def _tenant_tokens_named(cls, value: SecretStr) -> SecretStr:
        for entry in _entries(value):
            tenant, sep, token = entry.partition("=")
            if not sep or not token.strip() or not TENANT_NAME.fullmatch(tenant.strip()):
                # The entry itself is a secret: say where it is, never what it holds.
                raise ValueError("each entry must be TENANT=TOKEN, the tenant a name like a job's tenant field")
        return value

    def api_tokens(self) -> list[tuple[str, str]]:
        """(role, token) for every configured API token (a tenant's token is a producer's)."""
        by_role = {"producer": self.producer_tokens, "runner": self.runner_tokens, "operator": self.operator_tokens}
        listed = [(role, t) for role, tokens in by_role.items() for t in _entries(tokens)]
        return listed + [("producer", token) for _, token in self.tenant_bound_tokens()]

    def tenant_bound_tokens(self) -> list[tuple[str, str]]:
        """(tenant, token) for every producer token bound to a tenant."""
        pairs = (entry.partition("=") for entry in _entries(self.tenant_tokens))
        return [(tenant.strip(), token.strip()) for tenant, _, token in pairs]


# A job's `tenant` (schemas.jobs.Name).
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


def _entries(tokens: SecretStr) -> list[str]:
    return [t.strip() for t in tokens.get_secret_value().split(",") if t.strip()]


# --- sections: one service's own ----------------------------------------------------------------


class AdmissionSettings(Section):
    durable: str = "admission"
    # Messages decided per transaction: one lock, one count and one insert per pool per batch.
    fetch_batch: int = Field(default=256, gt=0)
    # A store outage redelivers the message after this delay instead of at once.
    retry_delay_s: float = Field(default=1.0, ge=0)


class DispatchSettings(Section):
    # Jobs claimed per step: large enough to fill many slots in one transaction.
    step_limit: int = Field(default=256, gt=0)
    # An assignment its runner has not started after this long (the dispatcher died mid hand-off,
    # or the runner's start request failed) goes back to the queue. Longer than the ack timeout.
    assigned_stale_s: float = 15.0


class LeaderSettings(Section):
    # Every dispatch instance contends for the lease of its shard, a NATS KV key with a
    # per-message TTL (whole seconds, at least 1), renewed well inside it. The holder stops
    # dispatching on its own clock if no renewal succeeds within the TTL.
    lease_ttl_s: int = Field(default=2, ge=1)
    lease_renew_s: float = Field(default=0.5, gt=0)
    # How long a standby waits for the watch before contending anyway (a lost watch event costs
    # at most this). Unset: the lease TTL.
    retry_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _renew_inside_ttl(self) -> LeaderSettings:
        if self.lease_renew_s >= self.lease_ttl_s:
            raise ValueError(f"lease_renew_s ({self.lease_renew_s}) must be under lease_ttl_s ({self.lease_ttl_s})")
        return self


class ProvisionerSettings(Section):
    # Workers started per pool per reconcile, and queued jobs counted for it.
    max_spawn: int = Field(default=64, gt=0)
    # A spawned worker that has not registered within this is stopped and no longer counted.
    start_timeout_s: float = Field(default=60.0, gt=0)


class SchedulerSettings(Section):
    # A fire time at most this late is on time: fired even under `catch_up: none` (a timer's or a
    # leader failover's lateness, not an outage's).
    on_time_s: float = Field(default=10.0, ge=0)
    # Schedules read per round when many are due at once.
    batch: int = Field(default=100, gt=0)


class CapacitySettings(Section):
    # Leader-mode pools (seed 002): capacity re-elects on every runner change, and every pool on
    # this timer in case an event was lost.
    leader_check_interval_s: float = Field(default=60.0, gt=0)
    # Capacity runs the retention pruner (orchestrator/retention.py) this often, deleting at most
    # `prune_batch` rows per statement, each statement its own short transaction.
    prune_interval_s: float = Field(default=60.0, gt=0)
    prune_batch: int = Field(default=500, gt=0, le=10_000)


class ApiSettings(Section):
    # Bodies past this answer 413 before they are parsed.
    max_body_bytes: int = Field(default=1_048_576, gt=0)
