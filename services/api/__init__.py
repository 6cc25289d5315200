"""The HTTP API (aiohttp): the admission door for HTTP producers, job views, operator views.

`POST /v1/jobs` (`jobs.py`, with every other job endpoint) validates the body with the same model
as every other door, then asks the admission service over the bus, so HTTP and NATS producers get
the same decisions. Reads come straight from Postgres, the truth. Pool changes (`PUT`/`PATCH
/v1/pools/{name}`, `pools.py`) go through `orchestrator.pools.change_pool`, the one way a pool
changes (the runtime applies the pools file with it too); runners' endpoints are `runners.py`,
schedules' `schedules.py`, rate limits' `rate_limits.py`, a job's output `logs.py`. Every error
is `{"error": {"code", "message", "field"}}`.

The endpoints are one table (`routes.py`) that registers them, says who may call them (`auth.py`,
bearer tokens with roles, off until tokens are configured) and generates `/openapi.json` from the
models that validate the bodies. The take protocol is `take.py` (with Servo's wire format in
`servo.py`), and why a queued job waits is `blocked.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from aiohttp import web

from orchestrator.bus import Bus
from orchestrator.bus.job_logs import JobLogs
from orchestrator.errors import OrchestratorError
from orchestrator.known_pools import KnownPools
from orchestrator.lifecycle import Service
from orchestrator.metrics import CONTENT_TYPE, Metrics, QueueCollector, exposition
from orchestrator.provisioning import ProvisionerFactory
from orchestrator.settings import ApiSettings, HttpSettings, LogLimits
from orchestrator.store import Store
from schemas.api import (
    FinishBody,
    JobCreated,
    JobDetail,
    JobList,
    LeaderView,
    Ok,
    PoolChanged,
    PoolDeleted,
    PoolDepth,
    PoolList,
    QueueDepth,
    RejectionList,
    RunnerList,
    RunnerView,
    Stats,
    Taken,
)
from schemas.events import AdmissionResult
from schemas.jobs import JobSpec, JobView
from schemas.pools import PoolConfig, PoolView
from schemas.runners import RunnerTaints
from schemas.schedules import ScheduleDeleted, ScheduleList, ScheduleSpec, ScheduleView
from services.api import params
from services.api.admitting import admit
from services.api.auth import Auth
from services.api.blocked import Why
from services.api.jobs import JobViews
from services.api.logs import JobLogsView
from services.api.pools import PoolViews
from services.api.rate_limits import RateLimitViews
from services.api.responses import (
    error_response,
    errors_as_json,
    json_response,
)
from services.api.routes import ANY_ROLE, OPERATOR, PRODUCER, PUBLIC, RUNNER, Link, Media, Route, openapi, register
from services.api.runners import RunnerViews
from services.api.schedules import ScheduleViews
from services.api.servo import ServoDoor
from services.api.shards import leader_view
from services.api.take import Takes

# Plain HTML and JS polling the JSON API: nothing to build.
_DASHBOARD = (resources.files("services") / "static" / "dashboard.html").read_text()


class Api(Service):
    name = "api"

    def __init__(
        self,
        config: ApiSettings,
        http: HttpSettings,
        log_limits: LogLimits,
        store: Store,
        bus: Bus,
        *,
        metrics: Metrics | None = None,
        known_pools: KnownPools | None = None,
        provisioners: Mapping[str, ProvisionerFactory] | None = None,
    ) -> None:
        """`provisioners`: the names the runtime gives its provisioner service, so that a pool is
        refused a provisioner that service could not load."""
        super().__init__()
        self.config = config
        self.http = http
        self.log_limits = log_limits
        self.store = store
        self.bus = bus
        # This process's counters, and the queue's gauges read from Postgres when scraped.
        self.metrics = metrics or Metrics()
        self.queue = QueueCollector(store)
        self.url: str | None = None
        self.takes = Takes(store, bus)
        self.logs = JobLogsView(store, JobLogs(bus), self.takes.waiters)
        self.servo = ServoDoor(store, self.takes, self.admit)
        self.why = Why(store, bus, known_pools)
        if known_pools is None:  # its own: a deleted pool's series go with it (the runtime's does that itself)
            self.why.known_pools.on_gone(self.metrics.forget_pool)
        self.jobs = JobViews(store, bus, self.why, self.logs, self.takes, self.admit)
        self.pools = PoolViews(store, bus, provisioners or {})
        self.runners = RunnerViews(store, bus)
        self.schedules = ScheduleViews(store, bus)
        self.rate_limits = RateLimitViews(store, bus)
        self.app = self._build_app()

    def _routes(self) -> list[Route]:
        jobs, pools, runners = PRODUCER | RUNNER, OPERATOR, OPERATOR
        job, take = (params.JOB_ID,), (params.JOB_ID, params.TOKEN, params.WAIT)
        return [
            Route("POST", "/v1/jobs", self.jobs.submit, PRODUCER, "Submit a job", JobSpec,
                  {201: JobCreated, 200: JobCreated}, (409, 422, 429, 503), retry_after=(429,),
                  links=self._job_links()),
            Route("GET", "/v1/jobs", self.jobs.list_jobs, jobs, "List jobs, newest first", None, {200: JobList}, (422,),
                  (params.POOL, params.STATE, params.KEY, params.LIMIT)),
            Route("GET", "/v1/jobs/{id}", self.jobs.get_job, jobs, "A job, and while it waits why", None,
                  {200: JobDetail}, (404,), job),
            Route("GET", "/v1/jobs/{id}/logs", self.jobs.get_job_logs, jobs,
                  "A job's output: text/plain, or Server-Sent Events (Accept: text/event-stream) whose id is "
                  "the byte offset", None,
                  {200: Media("the job's output from `offset`", ("text/plain", "text/event-stream"))}, (404, 422),
                  (params.JOB_ID, params.OFFSET, params.FOLLOW)),
            Route("DELETE", "/v1/jobs/{id}", self.jobs.cancel_job, PRODUCER, "Cancel a job", None,
                  {200: JobView, 202: JobView}, (404, 409), job),
            Route("POST", "/v1/jobs/{id}/take", self.jobs.take_job, PUBLIC, "Take the runner holding a job (seed 003)",
                  None, {200: Taken}, (403, 404, 422, 503), take, retry_after=(503,)),
            Route("POST", "/v1/jobs/{id}/finish", self.jobs.finish_job, jobs,
                  "End a reservation a runner holds (its take token, or the operator role)",
                  FinishBody, {200: JobView}, (403, 404, 409, 422), (params.JOB_ID, params.OPTIONAL_TOKEN)),
            Route("POST", "/profile/{pool}/enqueue", self.servo.enqueue, PRODUCER,
                  "Servo: enqueue a reservation; the body is its token", None, {200: Media("the take token")},
                  (409, 422, 429), (params.PROFILE, params.UNIQUE_ID, params.QUALIFIED_REPO, params.RUN_ID),
                  text_errors=True, retry_after=(429,)),
            Route("POST", "/take/{unique_id}", self.servo.take, PUBLIC, "Servo: take the runner (JSON)", None,
                  {200: RunnerView, 503: None}, (403, 404, 422), (params.SERVO_ID, params.TOKEN, params.WAIT),
                  text_errors=True, retry_after=(503,)),
            Route("GET", "/v1/pools", self.pools.list_pools, ANY_ROLE, "List pools", None, {200: PoolList}),
            Route("GET", "/v1/pools/{name}", self.pools.get_pool, ANY_ROLE, "A pool", None, {200: PoolView}, (404,),
                  (params.POOL_NAME,)),
            Route("PUT", "/v1/pools/{name}", self.pools.put_pool, pools, "Create or replace a pool", PoolConfig,
                  {200: PoolChanged, 201: PoolChanged}, (422,), (params.POOL_NAME,)),
            Route("PATCH", "/v1/pools/{name}", self.pools.patch_pool, pools, "Change the given fields of a pool",
                  PoolConfig, {200: PoolChanged}, (404, 422), (params.POOL_NAME,)),
            Route("DELETE", "/v1/pools/{name}", self.pools.delete_pool, pools,
                  "Delete a pool and its ended jobs; 409 while it has jobs queued, assigned or running, or "
                  "runners not lost", None, {200: PoolDeleted}, (404, 409), (params.POOL_NAME,)),
            Route("GET", "/v1/schedules", self.schedules.list_schedules, ANY_ROLE, "List schedules", None,
                  {200: ScheduleList}),
            Route("GET", "/v1/schedules/{name}", self.schedules.get_schedule, ANY_ROLE,
                  "A schedule: its next fire time and the last job it fired", None, {200: ScheduleView}, (404,),
                  (params.SCHEDULE_NAME,)),
            Route("PUT", "/v1/schedules/{name}", self.schedules.put_schedule, PRODUCER,
                  "Create or replace a schedule: a job spec submitted on a cron, in a time zone", ScheduleSpec,
                  {200: ScheduleView, 201: ScheduleView}, (422,), (params.SCHEDULE_NAME,),
                  links=self._schedule_links()),
            Route("DELETE", "/v1/schedules/{name}", self.schedules.delete_schedule, PRODUCER,
                  "Delete a schedule (the jobs it fired are left as they are)", None, {200: ScheduleDeleted},
                  (404,), (params.SCHEDULE_NAME,)),
            *self.rate_limits.routes(),
            Route("GET", "/v1/queue", self.queue_depth, ANY_ROLE, "Jobs waiting and in flight, per pool", None,
                  {200: QueueDepth}),
            Route("GET", "/v1/rejections", self.list_rejections, OPERATOR,
                  "What the JetStream door refused, newest first, a page at a time", None,
                  {200: RejectionList}, (422,), (params.REASON, params.LIMIT, params.REJECTIONS_AFTER)),
            Route("GET", "/v1/runners", self.runners.list_runners, ANY_ROLE,
                  "List runners in id order, a page at a time", None, {200: RunnerList}, (422,),
                  (params.LIMIT, params.RUNNERS_AFTER)),
            Route("POST", "/v1/runners/{id}/drain", self.runners.drain_runner, runners | RUNNER,
                  "Drain a runner: it runs what it has and is given nothing more", None, {200: RunnerView}, (404, 409),
                  (params.RUNNER_ID,)),
            Route("PUT", "/v1/runners/{id}/taints", self.runners.set_runner_taints, runners,
                  "Replace a runner's taints", RunnerTaints, {200: RunnerView}, (404, 422), (params.RUNNER_ID,)),
            Route("GET", "/v1/leader", self.get_leader, ANY_ROLE, "The dispatcher leader", None, {200: LeaderView}),
            Route("GET", "/v1/stats", self.get_stats, ANY_ROLE, "Queue state per pool and runners by state", None,
                  {200: Stats}),
            Route("GET", "/metrics", self.get_metrics, PUBLIC, "Prometheus metrics", None,
                  {200: Media("Prometheus text exposition")}),
            Route("GET", "/", self.dashboard, PUBLIC, "The live dashboard (HTML)", None,
                  {200: Media("the page", ("text/html",))}),
            Route("GET", "/openapi.json", self.get_openapi, PUBLIC, "This document", None,
                  {200: Media("OpenAPI 3.1", ("application/json",), {"type": "object"})}),
            Route("GET", "/healthz", self.healthz, PUBLIC, "Alive", None, {200: Ok}),
            Route("GET", "/readyz", self.readyz, PUBLIC, "Ready to serve", None, {200: Ok}, (503,)),
        ]  # fmt: skip

    def _job_links(self) -> tuple[Link, ...]:
        """A submitted job's id (and take token) lead to every operation on the job."""
        by_id = {"id": "$response.body#/id"}
        with_token = {**by_id, "token": "$response.body#/token"}
        return (
            Link(self.jobs.get_job.__name__, by_id),
            Link(self.jobs.get_job_logs.__name__, by_id),
            Link(self.jobs.take_job.__name__, with_token),
            Link(self.jobs.finish_job.__name__, with_token),
            Link(self.jobs.cancel_job.__name__, by_id),
        )

    def _schedule_links(self) -> tuple[Link, ...]:
        """A schedule's name leads to reading and deleting it."""
        by_name = {"name": "$response.body#/name"}
        return (
            Link(self.schedules.get_schedule.__name__, by_name),
            Link(self.schedules.delete_schedule.__name__, by_name),
        )

    def _build_app(self) -> web.Application:
        self.routes = self._routes()
        auth = Auth(self.http.api_tokens(), self.http.tenant_bound_tokens())
        guard = auth.middleware({r.key: r.roles for r in self.routes})
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[errors_as_json, guard])
        register(app, self.routes)
        self.openapi = openapi(self.routes, title="orchestrator", version="v1", auth=auth.enabled)
        return app

    async def on_start(self) -> None:
        await self.logs.logs.ensure_stream(self.log_limits.log_retention_s, self.log_limits.log_store_max_bytes)
        self.on_cleanup(self.takes.waiters.unfollow)  # once the last long poll has ended
        await self.why.start(self)
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.http.http_host, self.http.http_port)
        await site.start()
        self.on_cleanup(runner.cleanup)
        port = runner.addresses[0][1]
        self.url = f"http://{self.http.http_host}:{port}"

    async def on_stop(self) -> None:
        self.takes.stop()  # long polls answer now, so the server stops without waiting for them

    # --- producers -----------------------------------------------------------------------------

    async def admit(self, spec: JobSpec) -> AdmissionResult:
        """Ask the admission service, as every door does (see admitting.py)."""
        return await admit(self.bus, spec)

    # --- operators -----------------------------------------------------------------------------

    async def list_rejections(self, request: web.Request) -> web.Response:
        """What the JetStream door refused (its producers had nobody to answer them), a page at a time."""
        reason, limit, before = (p.parse(request) for p in (params.REASON, params.LIMIT, params.REJECTIONS_AFTER))
        found = await self.store.rejection_list(reason=reason, limit=limit + 1, before=before)
        rows, next_after = params.page(found, limit, lambda row: row["id"])
        return json_response(RejectionList.model_validate({"rejections": rows, "next": next_after}))

    async def queue_depth(self, request: web.Request) -> web.Response:
        return json_response(QueueDepth(pools=[PoolDepth(**row) for row in await self.store.pool_depth_list()]))

    async def get_openapi(self, request: web.Request) -> web.Response:
        return json_response(self.openapi)

    async def get_leader(self, request: web.Request) -> web.Response:
        """Each dispatch shard's newest term as recorded in Postgres (holder, epoch, since), and
        who holds its lease right now (`lease`: null while nobody does, e.g. during a failover);
        the first shard's at the top level, as before there were shards."""
        return json_response(await leader_view(self.store, self.bus))

    async def get_stats(self, request: web.Request) -> web.Response:
        """Each pool's queue right now (queued, in flight, free slots, oldest wait) and runners by
        state: what the dashboard shows beside the pools' configuration."""
        pools, runners = await self.store.metrics_snapshot()
        return json_response(Stats.model_validate({"pools": pools, "runners": runners}))

    async def get_metrics(self, request: web.Request) -> web.Response:
        await self.queue.refresh()
        return web.Response(body=exposition(self.metrics, self.queue), headers={"Content-Type": CONTENT_TYPE})

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(text=_DASHBOARD, content_type="text/html")

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = []
        try:
            await self.store.pool_list()
        except OrchestratorError as exc:
            problems.append(f"store: {exc}")
        if not self.bus.connected:
            problems.append("bus: not connected to NATS")
        if problems:
            return error_response(503, "not_ready", "; ".join(problems))
        return json_response({"ok": True})
