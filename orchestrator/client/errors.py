"""The client's one exception: what the API said was wrong, or why it could not be asked."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer of 400 or more, carrying the API's `{"error": {code, message, field}}`, or a
    failure to reach the API at all (`status` None, `code` "unreachable")."""

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_answer(cls, status: int, body: Any, text: str) -> ApiError:
        """From an error answer: the API's error body, or whatever else answered (a proxy's page)."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return cls(status, str(error.get("code") or "error"), error["message"], error.get("field"))
        return cls(status, "http_error", text.strip()[:200] or f"HTTP {status}")
