"""The embedded dev stack: a real nats-server (JetStream) and a real PostgreSQL, from PyPI wheels.

`orchestrator up` uses it when no `ORCH_NATS_URL` / `ORCH_DATABASE_URL` is set; the tests use the
same classes for their session servers. Data lives under the data dir and survives restarts.
Neither server lets a stranger in: NATS asks for a token (when given one: `up` always does),
Postgres listens on a unix socket in a 0700 directory and asks for a password; both secrets are
generated once into files of mode 0600 (orchestrator/private_files.py). What the servers say of
themselves is logged at DEBUG, but for nats-server's warnings and errors.
"""

from orchestrator.embedded.nats_server import (
    READY_TIMEOUT_S,
    EmbeddedNats,
    free_port,
    nats_port,
    nats_server_binary,
    port_is_free,
)
from orchestrator.embedded.postgres_server import EmbeddedPostgres

__all__ = [
    "READY_TIMEOUT_S",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "free_port",
    "nats_port",
    "nats_server_binary",
    "port_is_free",
]
