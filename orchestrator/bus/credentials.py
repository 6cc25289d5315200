"""How the bus proves who it is to NATS, and whom it trusts: credentials and TLS from settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.settings import Settings


@dataclass(frozen=True, repr=False)  # no repr: it holds secrets
class NatsCredentials:
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsCredentials:
        return cls(
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value() if settings.nats_password else None,
            token=settings.nats_token.get_secret_value() if settings.nats_token else None,
            creds_file=settings.nats_creds_file,
            tls_ca_file=settings.nats_tls_ca_file,
            tls_cert_file=settings.nats_tls_cert_file,
            tls_key_file=settings.nats_tls_key_file,
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`. Credentials in the URL itself also work."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.token is not None:
            options["token"] = self.token
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.tls_ca_file or self.tls_cert_file:
            # Verification stays on: a private CA is trusted in addition to the system's roots.
            context = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
            if self.tls_cert_file and self.tls_key_file:
                context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            options["tls"] = context
        return options
