"""Settings from `ORCH_*` environment variables, one model for every process."""

from __future__ import annotations

import platform
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_runner_labels() -> str:
    return f"{platform.system().lower()},{platform.machine().lower()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    # Where the servers are. Unset in `up`: the embedded stack starts its own.
    nats_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path(".orchestrator")

    # The first token of every subject and stream name. Tests give each test its own.
    namespace: str = Field(default="orch", pattern=r"^[a-z][a-z0-9_]{0,31}$")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
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

    def runner_label_list(self) -> list[str]:
        return [label for label in (s.strip() for s in self.runner_labels.split(",")) if label]
