"""The composition root: builds the connections and any subset of services, starts them in
dependency order, and stops them all gracefully in reverse. Only `app/` imports services;
nothing in the core imports it.

With no `ORCH_NATS_URL` / `ORCH_DATABASE_URL` it first starts the embedded stack under the data
dir (`orchestrator up`), with credentials generated there once: the NATS token in `nats.token`,
the Postgres password in `postgres.password` (mode 0600 both), which this process, its runners
and its provisioned workers use, and `endpoints.json` passes on to those joining it.
"""

from __future__ import annotations

import asyncio
import platform
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import SecretStr

from app import endpoints
from app.local_provisioner import LocalProvisioner
from app.metrics_server import MetricsServer
from orchestrator import logs, private_files, telemetry
from orchestrator.bus import Bus
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres, nats_port
from orchestrator.errors import ConfigurationError
from orchestrator.exposure import open_door
from orchestrator.known_pools import KnownPools
from orchestrator.leadership import Leaderships
from orchestrator.lifecycle import Service
from orchestrator.metrics import Metrics
from orchestrator.outbox import OutboxRelay
from orchestrator.pools import apply_pools_file
from orchestrator.provisioning import ProvisionerFactory
from orchestrator.redact import url_secrets
from orchestrator.retention import Pruner
from orchestrator.settings import NatsCredentials, Settings
from orchestrator.store import Store
from services.admission import Admission
from services.admission.scheduler import Scheduler
from services.api import Api
from services.capacity import Capacity
from services.dispatch import Dispatch
from services.leader import Leader
from services.provisioner import Provisioning
from services.runner import Runner

# Start order: those that answer requests before those that make them.
SERVICES = ("capacity", "admission", "dispatch", "provisioner", "api", "runner")
# Dispatch and the provisioner always run under the leases of the dispatch shards: their leader
# service starts just before them (and stops just after them, releasing the leases for standbys).
# Dispatch follows each pool's shard's lease; the provisioner the first shard's alone, and so does
# the scheduler (fires schedules), which goes with dispatch: wherever jobs are dispatched, they are
# fired. Every process whose
# services make job transitions runs an outbox relay (one publishes at a time); it starts first
# and stops last, so what the others committed leaves before the process does. Every process
# with a service that counts or keeps anything per pool knows the pools (`KnownPools`: names from
# the bus are checked against it, and a deleted pool's series and entries are dropped).
_ORDER = (
    "relay", "pools", "capacity", "admission", "leader", "dispatch", "scheduler", "provisioner", "api", "runner"
)  # fmt: skip
_TRANSITIONS = {"capacity", "admission", "dispatch", "api"}
_PER_POOL = {"capacity", "admission", "dispatch", "provisioner", "api"}
# Provisioners a pool can name without an entry point or import path (orchestrator/provisioning.py).
PROVISIONERS: Mapping[str, ProvisionerFactory] = {"local": LocalProvisioner}
# The embedded stack's files in the data dir (the password file is EmbeddedPostgres's default).
NATS_TOKEN_FILE = "nats.token"
POSTGRES_DIR = "postgres"

_log = telemetry.get_logger("runtime")


def runner_id_for(data_dir: Path) -> str:
    """A stable id for the local runner of a data dir, so a restart re-registers as itself and
    what the store held against it is released at once."""
    path = data_dir / "runner_id"
    if path.exists():
        return path.read_text().strip()
    host = re.sub(r"[^A-Za-z0-9_\-]", "-", platform.node() or "local")[:40] or "local"
    rid = f"{host}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rid)
    return rid


class Runtime:
    def __init__(
        self,
        settings: Settings,
        services: Sequence[str] = SERVICES,
        *,
        migrate: bool = False,
        runner: Runner | None = None,
        provisioners: Mapping[str, ProvisionerFactory] | None = None,
    ) -> None:
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise ConfigurationError(f"unknown services {unknown}: choose from {list(SERVICES)} or 'all'")
        self.settings = settings
        # Before anything starts: an api open to the network with no token is refused here.
        self._open_door = open_door(settings.http) if "api" in services else None
        leased = {"dispatch", "provisioner"} & set(services)
        relayed = _TRANSITIONS & set(services)
        per_pool = _PER_POOL & set(services)
        self.names = [
            name
            for name in _ORDER
            if name in services
            or (name == "leader" and leased)
            or (name == "scheduler" and "dispatch" in services)
            or (name == "relay" and relayed)
            or (name == "pools" and per_pool)
        ]
        self.provisioners = {**PROVISIONERS, **(provisioners or {})}
        self.migrate = migrate
        self._runner = runner
        self.embedded = settings.nats_url is None and settings.database_url is None
        if not self.embedded and (settings.nats_url is None or settings.database_url is None):
            raise ConfigurationError("set both ORCH_NATS_URL and ORCH_DATABASE_URL, or neither for the embedded stack")
        self._nats_server: EmbeddedNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self.nats_url = settings.nats_url
        self.database_url = settings.database_url
        self.store: Store | None = None
        self.bus: Bus | None = None
        self.known_pools: KnownPools | None = None
        self.services: dict[str, Service] = {}
        self.leaderships = Leaderships(settings.dispatch_shards, settings.instance_id)
        # One set of counters for the process: every service adds to it; the api serves it (or,
        # without the api, the metrics port).
        self.metrics = Metrics()
        if "dispatch" in services:
            self.metrics.watch(self.leaderships)

    @property
    def _label(self) -> str:
        """The services this process runs, as its telemetry and NATS client names say (the relay
        goes with any of them, so it is left out)."""
        return "-".join(name for name in self.names if name not in ("relay", "pools"))

    async def start(self) -> None:
        telemetry.setup(f"orchestrator-{self._label}" if len(self.names) < len(_ORDER) else "orchestrator")
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        if self.embedded:
            s.data_dir.mkdir(parents=True, exist_ok=True)
            port = nats_port(s.data_dir / "nats_port", s.nats_host, s.nats_port)
            token = private_files.secret(s.data_dir / NATS_TOKEN_FILE)
            self._nats_server = EmbeddedNats(s.data_dir / "nats", host=s.nats_host, port=port, token=token)
            self._postgres = EmbeddedPostgres(s.data_dir / POSTGRES_DIR)
            self.nats_url, self.database_url = await asyncio.gather(self._nats_server.start(), self._postgres.start())
            # The embedded NATS's token replaces whatever NATS credentials the settings name
            # (they are for another server), and its one account has the default prefixes.
            defaults = {name: field.default for name, field in NatsCredentials.model_fields.items()}
            self.settings = s = s.model_copy(update={**defaults, "nats_token": SecretStr(token)})
            logs.mask([token, *url_secrets(self.database_url)])
        assert self.nats_url and self.database_url
        self.store = Store.from_settings(s, dsn=self.database_url)
        self.bus = Bus.from_settings(s, name=f"orchestrator-{self._label}", url=self.nats_url)
        self.metrics.watch_bus(self.bus)
        await asyncio.gather(self.store.connect(), self.bus.connect())
        if self.migrate:
            applied = await self.store.migrate()
            if applied:
                _log.info("applied migrations %s", applied)
        if s.pools_file is not None:
            changes = await apply_pools_file(self.store, self.bus, s.pools_file)
            _log.info("applied %s: %d pools, %d changed", s.pools_file, len(changes), sum(c.changed for c in changes))
        if self.migrate and "runner" in self.names:  # `up`: the local runner's pool must exist
            await self.store.pool_create_if_absent(s.runner_pool, s.runner_label_list())
        for name in self.names:
            service = self.build(name)
            self.services[name] = service
            await service.start()
        if s.metrics_port is not None and "api" not in self.names:
            self.services["metrics"] = MetricsServer(self.metrics, s.http_host, s.metrics_port)
            await self.services["metrics"].start()
        if self._open_door:
            _log.warning(self._open_door)
        _log.info("serving %s as %s", ", ".join(self.names), s.instance_id)

    def build(self, name: str) -> Service:
        """A new, unstarted service `name` on this runtime's connections and counters."""
        s, store, bus = self.settings, self.store, self.bus
        assert store is not None and bus is not None
        m = self.metrics
        if name == "relay":
            return OutboxRelay(store, bus)
        if name == "pools":
            self.known_pools = KnownPools(store, bus)
            self.known_pools.on_gone(m.forget_pool)
            return self.known_pools
        known = self.known_pools
        if name == "capacity":
            pruner = Pruner(s.retention, store, batch=s.capacity.prune_batch, metrics=m)
            return Capacity(s.capacity, s.timings, s.log_limits, store, bus, metrics=m, pruner=pruner)
        if name == "admission":
            return Admission(s.admission, store, bus, metrics=m)
        if name == "leader":
            return Leader(s.leader, store, bus, self.leaderships)
        if name == "dispatch":
            return Dispatch(
                s.dispatch, s.timings, store, bus, leaderships=self.leaderships, metrics=m, known_pools=known
            )
        if name == "scheduler":  # one scheduler, whatever the shards
            return Scheduler(s.scheduler, s.timings, store, bus, leadership=self.leaderships.first, metrics=m)
        if name == "provisioner":
            return Provisioning(
                s.provisioner,
                s.timings,
                store,
                bus,
                self.provisioners,
                data_dir=s.data_dir,
                instance_id=s.instance_id,
                leadership=self.leaderships.first,  # one provisioner, whatever the shards
                metrics=m,
                known_pools=known,
                retention=s.retention,
            )
        if name == "api":
            return Api(
                s.api, s.http, s.log_limits, store, bus, metrics=m, known_pools=known, provisioners=self.provisioners
            )
        return self._runner or Runner(
            s.timings,
            s.log_limits,
            bus,
            runner_id=runner_id_for(s.data_dir),
            pool=s.runner_pool,
            labels=s.runner_label_list(),
            slots=s.runner_slots,
        )

    async def stop(self) -> None:
        """Stop services in reverse order, each within the stop timeout, then the connections."""
        for name in reversed(list(self.services)):
            try:
                async with asyncio.timeout(self.settings.stop_timeout_s + 5):
                    await self.services[name].stop()
            except Exception as exc:  # keep stopping the rest
                _log.warning("stopping %s failed: %s", name, exc)
        self.services.clear()
        if self.bus is not None:
            await self.bus.close()
        if self.store is not None:
            await self.store.close()
        if self._nats_server is not None:
            await self._nats_server.stop()
        if self._postgres is not None:
            await self._postgres.stop()

    def hurry(self) -> None:
        """Make a stop under way finish at once (a second Ctrl-C): the runner kills its running
        jobs now instead of waiting the stop timeout for them, and tells capacity, which requeues
        them at once (without that notice: the next start's registration, or the lost sweep)."""
        for service in self.services.values():
            service.hurry()

    @property
    def http_url(self) -> str | None:
        api = self.services.get("api")
        return api.url if isinstance(api, Api) else None

    def endpoints(self) -> endpoints.Endpoints:
        return endpoints.Endpoints(
            http=self.http_url, nats=self.nats_url, database=self.database_url, nats_token=self.settings.nats_token
        )

    def write_endpoints(self) -> Path:
        return endpoints.write(self.settings.data_dir, self.endpoints())
