"""`GET /metrics` for a process that runs no api (`orchestrator serve dispatch` ...): its own
counters on `ORCH_METRICS_PORT`. The queue gauges come from Postgres and are the same from any
process, so only the api serves them, once."""

from __future__ import annotations

from aiohttp import web

from orchestrator.lifecycle import Service
from orchestrator.metrics import CONTENT_TYPE, Metrics, exposition


class MetricsServer(Service):
    name = "metrics"

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        super().__init__()
        self.metrics = metrics
        self.host, self.port = host, port
        self.url: str | None = None

    async def on_start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._get)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.on_cleanup(runner.cleanup)
        self.url = f"http://{self.host}:{runner.addresses[0][1]}"

    async def _get(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self.metrics), headers={"Content-Type": CONTENT_TYPE})
