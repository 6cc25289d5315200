"""The endpoints file: where a running `orchestrator up` is, `<data dir>/endpoints.json` with
`{"http": ..., "nats": ..., "database": ..., "nats_token": ...}`. `up` writes it once every
service serves; commands of the same data dir read it where their own settings are silent:
`runner` and `serve` when ORCH_NATS_URL is unset (`joined`), the client commands when ORCH_URL
is (`read`). It stays after `up` stops: the embedded NATS keeps its port and its token over
restarts, so what it says stays true. It holds secrets (the NATS token, the database's
password in its DSN), so it is readable by its owner only (mode 0600, from its creation)."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_serializer

from orchestrator import private_files
from orchestrator.errors import ConfigurationError
from orchestrator.redact import redact_url
from orchestrator.settings import Settings

FILE = "endpoints.json"

# A plain logger: the client commands read this file, and need none of telemetry's imports.
_log = logging.getLogger("orchestrator.endpoints")


class Endpoints(BaseModel):
    model_config = ConfigDict(frozen=True)

    http: str | None = None
    nats: str | None = None
    database: str | None = None
    # The token NATS asks of its clients (the embedded one always does): not in `nats`, so
    # that the URL can be shown as it is.
    nats_token: SecretStr | None = None

    @field_serializer("nats_token", when_used="json")
    def _whole(self, token: SecretStr | None) -> str | None:
        return token.get_secret_value() if token is not None else None

    def shown(self) -> str:
        """`http=... nats=... database=...`, as `up` announces them: no secret in sight."""
        urls = {"http": self.http, "nats": self.nats, "database": self.database}
        return " ".join(f"{name}={redact_url(url) if url else url}" for name, url in urls.items())


def path(data_dir: Path) -> Path:
    return data_dir / FILE


def write(data_dir: Path, endpoints: Endpoints) -> Path:
    file = path(data_dir)
    private_files.write(file, endpoints.model_dump_json(indent=2) + "\n")
    return file


def read(data_dir: Path) -> Endpoints | None:
    """What the data dir's endpoints file says; None without one."""
    file = path(data_dir)
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror}") from None
    try:
        return Endpoints.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigurationError(f"{file} is not an endpoints file `orchestrator up` wrote: {exc}") from None


def joined(settings: Settings) -> Settings:
    """`settings` joined to the system `up` runs from their data dir, when ORCH_NATS_URL is
    unset: its NATS with its token, and its Postgres unless ORCH_DATABASE_URL is set. As they
    are without an endpoints file."""
    if settings.nats_url is not None:
        return settings
    found = read(settings.data_dir)
    if found is None or found.nats is None:
        return settings
    servers: dict[str, object] = {"nats_url": found.nats}
    if found.nats_token is not None:
        servers["nats_token"] = found.nats_token
    if settings.database_url is None and found.database is not None:
        servers["database_url"] = found.database
    _log.info("ORCH_NATS_URL is unset: joining %s from %s", redact_url(found.nats), path(settings.data_dir))
    return settings.model_copy(update=servers)
