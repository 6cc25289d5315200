"""Secret tokens: a job's take token and the API's bearer tokens.

Only a token's SHA-256 is ever stored or kept in memory, and a presented token is checked by
comparing hashes in constant time (`hmac.compare_digest`), so neither a database dump nor the
time an answer takes gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    """A random, URL-safe token (192 bits): it travels in query strings (`?token=`)."""
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_matches(presented: str | None, stored_hash: bytes | None) -> bool:
    """Whether `presented` is the token whose hash is `stored_hash`, in constant time."""
    if presented is None or stored_hash is None:
        return False
    return hmac.compare_digest(token_hash(presented), bytes(stored_hash))
