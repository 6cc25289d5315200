"""Keeping secrets out of what the orchestrator prints and logs.

Two layers: URLs are shown with their credentials masked wherever they appear in a message
(`redact_url`), and every log line is scrubbed of the configured secret values (`Redactor`), so
a secret that reaches a message some other way (an exception's text, a library's log) is still
masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
# NATS reads `nats://<token>@host` as a token; Postgres reads `postgresql://<user>@host` as a user.
_USER_IS_SECRET = ("nats", "tls", "ws", "wss")
_SECRET_PARAMS = ("password", "token", "sslpassword")
# Shorter values would mask ordinary words in every line ("p1" in "p1 ready").
MIN_SECRET_LENGTH = 4


def redact_url(url: str) -> str:
    """`url` (or a comma-separated list of them, as NATS accepts) with credentials masked."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all: show nothing of it rather than a secret
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        if password:
            userinfo = f"{user}:{MASK}"
        elif not has_password and parts.scheme in _USER_IS_SECRET:
            userinfo = MASK
        netloc = f"{userinfo}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):  # else left exactly as written
        query = urlencode([(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secrets inside `url` (or a comma-separated list): passwords, NATS tokens, secret
    query parameters; each as written and decoded, so either form is masked in a log line."""
    found: list[str] = []
    for part in url.split(","):
        try:
            parts = urlsplit(part)
        except ValueError:
            continue
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at:
            user, has_password, password = userinfo.partition(":")
            if has_password:
                found.append(password)
            elif parts.scheme in _USER_IS_SECRET:
                found.append(user)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS]
    return [v for secret in found if secret for v in {secret, unquote(secret)}]


class Redactor:
    """Masks each of a set of secret values wherever it occurs in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self.values))) if self.values else None

    def adding(self, secrets: Iterable[str]) -> Redactor:
        """A redactor of these secrets too."""
        return Redactor([*self.values, *secrets])

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text
