"""How the bus proves who it is to NATS, and whom it trusts: credentials and TLS from settings,
and where its replies come (the inbox prefix a restricted NATS user may read).

The fields are declared once, in `orchestrator.settings.NatsCredentials` (flat `ORCH_NATS_*`
variables); this turns them into what `nats.connect` takes, and back into those variables for a
process that must connect as this one does (a provisioned worker).
"""

from __future__ import annotations

import ssl
from typing import Any

from pydantic import SecretStr

from orchestrator.settings import NatsCredentials

__all__ = ["NatsCredentials", "connect_options", "credentials_env"]


def connect_options(credentials: NatsCredentials) -> dict[str, Any]:
    """Keyword arguments for `nats.connect`. Credentials in the URL itself also work."""
    c = credentials
    options: dict[str, Any] = {"inbox_prefix": c.nats_inbox_prefix}
    if c.nats_user is not None:
        options["user"] = c.nats_user
        options["password"] = c.nats_password.get_secret_value() if c.nats_password else ""
    if c.nats_token is not None:
        options["token"] = c.nats_token.get_secret_value()
    if c.nats_creds_file is not None:
        options["user_credentials"] = str(c.nats_creds_file)
    if c.nats_tls_ca_file or c.nats_tls_cert_file:
        # Verification stays on: a private CA is trusted in addition to the system's roots.
        context = ssl.create_default_context(cafile=str(c.nats_tls_ca_file) if c.nats_tls_ca_file else None)
        if c.nats_tls_cert_file and c.nats_tls_key_file:
            context.load_cert_chain(str(c.nats_tls_cert_file), str(c.nats_tls_key_file))
        options["tls"] = context
    return options


def credentials_env(credentials: NatsCredentials) -> dict[str, str]:
    """The `ORCH_NATS_*` variables that set these credentials (those that are set)."""
    values = {name: getattr(credentials, name) for name in type(credentials).model_fields}
    return {
        f"ORCH_{name.upper()}": value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in values.items()
        if value is not None
    }
