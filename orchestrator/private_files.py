"""Files only their owner may read: the embedded stack's generated secrets and the endpoints
file that carries them.

Each is created with mode 0600 (`os.open(..., 0o600)`), never made private after the fact: a
reader who opened a file while it was still readable keeps reading it after a chmod. A write
goes to a new private file renamed over the old one, so a reader sees the old text or the new,
never half of either. A file that someone else could read (or that another user owns) is
refused, not used: its secret may be known.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from orchestrator.errors import ConfigurationError

MODE = 0o600


def write(path: Path, text: str, *, replace: bool = True, owner: tuple[int, int] | None = None) -> None:
    """`text` into `path`, readable by its owner only, atomically. Not `replace`: only if there
    is no `path` yet (FileExistsError otherwise), so two writers cannot both think they won.
    `owner` (uid, gid): whose it is, if not this process's (root writing for another user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MODE)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if `path` exists, where a rename would replace it
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read(path: Path) -> str | None:
    """The text of a private file; None without one. A file others could read is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd) as file:
        found = os.fstat(file.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise ConfigurationError(f"{path} is not a regular file")
        if found.st_uid != os.geteuid() or found.st_mode & 0o077:
            raise ConfigurationError(
                f"{path} is readable by others (mode {stat.S_IMODE(found.st_mode):04o}, owner uid "
                f"{found.st_uid}): its secret may be known; make it yours with mode 0600 (chown, chmod 600)"
            )
        return file.read()


def secret(path: Path) -> str:
    """The secret kept in `path`, generated there on first use (so a restart finds the same)."""
    found = read(path)
    if found is None:
        value = secrets.token_urlsafe(32)
        try:
            write(path, value + "\n", replace=False)
            return value
        except FileExistsError:  # another process made it meanwhile: theirs it is
            found = read(path) or ""
    if not found.strip():
        raise ConfigurationError(f"{path} is empty: delete it for a new secret, or restore the one it held")
    return found.strip()
