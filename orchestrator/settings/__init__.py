"""Settings from `ORCH_*` environment variables, one model for every process.

A knob of one service lives in that service's section: `ORCH_DISPATCH__STEP_LIMIT=64` sets
`settings.dispatch.step_limit`, and the service takes only its section. What several services
must agree on stays flat (`ORCH_RUNNER_TTL_S`), declared in small groups `Settings` inherits
(`Timings`, `LogLimits`, `Retention`, `HttpSettings`, `NatsCredentials`), so a service can be handed just the
group it reads (`settings.timings`); groups and sections are in `parts.py`. A field moved into a
section still answers to its former flat name (`MOVED`: `ORCH_LEASE_TTL_S` sets
`leader.lease_ttl_s`); the sectioned name wins over it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orchestrator.errors import ConfigurationError
from orchestrator.nats_servers import nats_servers
from orchestrator.redact import url_secrets
from orchestrator.settings.parts import (
    CREDENTIAL,
    AdmissionSettings,
    ApiSettings,
    CapacitySettings,
    Credential,
    DispatchSettings,
    Group,
    HttpSettings,
    LeaderSettings,
    LogLimits,
    NatsCredentials,
    ProvisionerSettings,
    Retention,
    SchedulerSettings,
    Section,
    Timings,
)

__all__ = [
    "CREDENTIAL",
    "MOVED",
    "RUNNER_REQUEST_TIMEOUT_S",
    "AdmissionSettings",
    "ApiSettings",
    "CapacitySettings",
    "Credential",
    "DispatchSettings",
    "Group",
    "HttpSettings",
    "LeaderSettings",
    "LogLimits",
    "NatsCredentials",
    "ProvisionerSettings",
    "Retention",
    "SchedulerSettings",
    "Section",
    "Settings",
    "Timings",
    "default_instance_id",
    "default_runner_labels",
    "env_fields",
    "secret_env_names",
]


def default_runner_labels() -> str:
    return f"{platform.system().lower()},{platform.machine().lower()}"


def default_instance_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in platform.node() or "local")[:40]
    return f"{host or 'local'}-{os.getpid()}"


# How long a runner waits for capacity's answer to a request (register, start, finish). The
# server's own timeout of a job allows for it: the runner's clock for a job starts only when the
# answer granting its start arrives.
RUNNER_REQUEST_TIMEOUT_S = 5.0


# Fields moved from the top level into a section, by their former flat name (the field keeps its
# name there): `ORCH_LEASE_TTL_S` is documented, and must not silently stop working.
MOVED: dict[str, str] = {
    "lease_ttl_s": "leader",
    "lease_renew_s": "leader",
    "assigned_stale_s": "dispatch",
    "leader_check_interval_s": "capacity",
    "max_body_bytes": "api",
}


class _FormerNames(EnvSettingsSource):
    """The variables of `MOVED` fields under their flat names, for `Settings._former_names` to put
    into their sections (the env source reads only declared fields)."""

    def __call__(self) -> dict[str, Any]:
        found = {name: self.env_vars.get(self._apply_case_sensitive(self.env_prefix + name)) for name in MOVED}
        return {name: value for name, value in found.items() if value is not None}


G = TypeVar("G", bound=Group)


class Settings(Timings, LogLimits, Retention, HttpSettings, NatsCredentials, BaseSettings):
    # Not frozen (the groups are): tests adjust a fixture's settings before building services.
    model_config = SettingsConfigDict(env_prefix="ORCH_", env_nested_delimiter="__", extra="ignore", frozen=False)

    # Where the servers are. Unset in `up`: the embedded stack starts its own. `nats_url` may list
    # the nodes of a NATS cluster, comma-separated (orchestrator/nats_servers.py).
    nats_url: Annotated[str | None, CREDENTIAL] = None
    database_url: Annotated[str | None, CREDENTIAL] = None
    # Replicas of the intake, job-events and job-output streams and of the lease bucket: 3 on a
    # NATS cluster of 3 keeps them all working while any one node is down. Set at creation; an
    # existing stream is brought to it where the server allows (orchestrator/bus/streams.py).
    nats_replicas: int = Field(default=1, ge=1, le=5)
    data_dir: Path = Path(".orchestrator")
    # Where the embedded NATS of `up` listens. No port: the one it had at the last start of this
    # data dir while it is free (so runners started on the side find it again), else a new one.
    # 0.0.0.0 lets runners on other machines in: those given its token (`<data dir>/nats.token`).
    nats_host: str = Field(default="127.0.0.1", min_length=1)
    nats_port: int | None = Field(default=None, ge=1, le=65535)

    # The first token of every subject and stream name. Tests give each test its own.
    namespace: str = Field(default="orch", pattern=r"^[a-z][a-z0-9_]{0,31}$")

    # A process without the api (`serve dispatch`, `serve admission`) serves its own counters at
    # GET /metrics on this port when set; with the api they are on the api's /metrics.
    metrics_port: int | None = None

    pools_file: Path | None = None
    runner_pool: str = "default"
    runner_slots: int = 4
    runner_labels: str = Field(default_factory=default_runner_labels)

    # Every process that changes jobs' states logs a line per job per change (store/transitions/
    # journal.py): at INFO, or at DEBUG (logged only with ORCH_LOG_LEVEL=DEBUG) for high rates.
    log_transitions: Literal["info", "debug"] = "info"

    db_pool_size: int = 10
    # Postgres ends a session idle inside a transaction for this long: a paused (SIGSTOP) or
    # partitioned ex-leader must not hold the epoch and pool row locks its successor needs.
    db_idle_in_transaction_s: float = 10.0
    # Every statement of a service is cancelled past this, and a wait for a lock past the lock
    # timeout (0: none): a stalled Postgres or a stuck lock holder fails the step, which is
    # retried, instead of hanging it. Migrations have neither (orchestrator/store/migrate.py).
    db_statement_timeout_s: float = Field(default=30.0, ge=0)
    db_lock_timeout_s: float = Field(default=5.0, ge=0)
    # asyncpg's prepared statements per connection; 0 behind PgBouncer in transaction mode,
    # which cannot keep a prepared statement between transactions.
    db_statement_cache_size: int = Field(default=100, ge=0)

    # The dispatch lease's shard (services/leader.py); the api reports its leader.
    dispatch_shard: str = Field(default="all", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Who this process is in `GET /v1/leader`, events and the lease value.
    instance_id: str = Field(default_factory=default_instance_id, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")

    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    provisioner: ProvisionerSettings = Field(default_factory=ProvisionerSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @field_validator("nats_url")
    @classmethod
    def _nats_servers(cls, url: str | None) -> str | None:
        if url is not None:
            nats_servers(url)  # raises naming the server that is wrong
        return url

    @classmethod
    def from_env(cls) -> Settings:
        """This process's settings, or a ConfigurationError naming each variable that is wrong
        (not its value: it may be a secret)."""
        try:
            return cls()
        except ValidationError as exc:
            problems = "; ".join(f"{_env_name(e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"invalid settings: {problems}") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # After the env source: a sectioned variable wins over the former flat one.
        return init_settings, env_settings, _FormerNames(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """Put a field given by its former flat name (variable or keyword) into its section,
        unless the section sets it too."""
        if not isinstance(data, dict) or not MOVED.keys() & data.keys():
            return data
        data = dict(data)
        for name in MOVED.keys() & data.keys():
            value, section = data.pop(name), MOVED[name]
            given = data.get(section) or {}
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            data[section] = {name: value, **given}
        return data

    def cut(self, group: type[G]) -> G:
        """This process's values of `group`'s fields, as a frozen `group` to hand a service."""
        return group.model_construct(**{name: getattr(self, name) for name in group.model_fields})

    @property
    def timings(self) -> Timings:
        return self.cut(Timings)

    @property
    def log_limits(self) -> LogLimits:
        return self.cut(LogLimits)

    @property
    def retention(self) -> Retention:
        return self.cut(Retention)

    @property
    def http(self) -> HttpSettings:
        return self.cut(HttpSettings)

    @property
    def nats_credentials(self) -> NatsCredentials:
        return self.cut(NatsCredentials)

    def runner_label_list(self) -> list[str]:
        return [label for label in (s.strip() for s in self.runner_labels.split(",")) if label]

    def secret_values(self) -> list[str]:
        """Every secret this process knows, for the log redactor: tokens, passwords (also those
        inside the URLs)."""
        values = [token for _, token in self.api_tokens()]
        values += [s.get_secret_value() for s in (self.nats_password, self.nats_token) if s is not None]
        for url in (self.nats_url, self.database_url):
            values += url_secrets(url or "")
        return values


def _env_fields(model: type[BaseModel], prefix: str) -> dict[str, FieldInfo]:
    found: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            found |= _env_fields(field.annotation, f"{env}__")
        else:
            found[env] = field
    return found


def env_fields() -> dict[str, FieldInfo]:
    """Every variable the settings read, with its field: a section's as `ORCH_<SECTION>__<FIELD>`,
    and the former flat names of `MOVED` fields."""
    found = _env_fields(Settings, "ORCH_")
    former = {
        f"ORCH_{name.upper()}": found[f"ORCH_{section.upper()}__{name.upper()}"] for name, section in MOVED.items()
    }
    return found | former


def _env_name(loc: tuple[int | str, ...]) -> str:
    """The variable of an error's location: ("dispatch", "step_limit") is ORCH_DISPATCH__STEP_LIMIT."""
    return "ORCH_" + "__".join(str(part).upper() for part in loc) if loc else "ORCH_*"


def _grants_access(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *get_args(field.annotation)) or any(
        isinstance(m, Credential) for m in field.metadata
    )


def secret_env_names() -> frozenset[str]:
    """The variables holding secrets (SecretStr fields, and those marked `CREDENTIAL`): a runner
    keeps them from its jobs."""
    return frozenset(name for name, field in env_fields().items() if _grants_access(field))
