"""A NATS cluster on loopback for tests: three nats-servers (the venv's binary) with JetStream and
cluster routes, each on free ports of 127.0.0.1 and with its own store dir, as PITFALLS.md's
recipe says. A node can be killed (-9), stopped (SIGSTOP) and started again on the same ports
and store; `stream_leader` says which node leads a stream.

A new cluster elects its JetStream meta leader only once every node is up (2 of 3 on empty stores
never do): `start()` starts all three at once and returns once each says it is healthy and the
meta layer has a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.embedded import nats_server_binary, port_is_free

CLUSTER = "orch-test"
READY_S = 30.0
# Ports below Linux's ephemeral range (32768-60999): a port chosen there could be taken by an
# outgoing connection between choosing it and the server binding it, or by the route itself.
_PORTS = (20000, 32000)


def _free_ports(n: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < n:
        port = random.randrange(*_PORTS)
        if port not in chosen and port_is_free("127.0.0.1", port):
            chosen.append(port)
    return chosen


@dataclass
class Node:
    name: str
    client_port: int
    monitor_port: int
    route_port: int
    store_dir: Path
    conf: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        ports = _free_ports(3 * size)
        self.nodes = [
            Node(
                name=f"n{i + 1}",
                client_port=ports[3 * i],
                monitor_port=ports[3 * i + 1],
                route_port=ports[3 * i + 2],
                store_dir=root / f"n{i + 1}" / "store",
                conf=root / f"n{i + 1}" / "nats.conf",
                log=root / f"n{i + 1}" / "nats.log",
            )
            for i in range(size)
        ]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes)
        for node in self.nodes:
            node.conf.parent.mkdir(parents=True, exist_ok=True)
            node.conf.write_text(
                f"server_name: {node.name}\n"
                f"listen: 127.0.0.1:{node.client_port}\n"
                f"http: 127.0.0.1:{node.monitor_port}\n"
                f'jetstream {{ store_dir: "{node.store_dir}", max_memory_store: 256MB, max_file_store: 2GB }}\n'
                f"cluster {{ name: {CLUSTER}, listen: 127.0.0.1:{node.route_port}, routes: [{routes}] }}\n"
            )

    @property
    def url(self) -> str:
        """Every node, as `ORCH_NATS_URL` lists a cluster."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    async def start(self) -> str:
        """Start every node that is not running, at once; return once all are healthy."""
        for node in self.nodes:
            if not node.running:
                await self._spawn(node)
        await self.ready()
        return self.url

    async def _spawn(self, node: Node) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        with node.log.open("ab") as log:
            node.proc = await asyncio.create_subprocess_exec(
                nats_server_binary(),
                "-c",
                str(node.conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def ready(self, timeout: float = READY_S) -> None:
        """Every running node answers healthy (JetStream current), and the meta layer has a leader."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            for node in self.nodes:
                if node.running:
                    await _until(lambda n=node: _healthy(http, n), deadline, f"{node.name} to be healthy", node)
            await _until(lambda: self._meta_leader(http), deadline, "a JetStream meta leader", None)

    async def _meta_leader(self, http: aiohttp.ClientSession) -> bool:
        for node in self.nodes:
            if node.running:
                jsz = await _get(http, f"{node.monitor}/jsz")
                if jsz and (jsz.get("meta_cluster") or {}).get("leader"):
                    return True
        return False

    async def kill(self, name: str) -> None:
        """kill -9: a crash, no goodbye to the cluster or the clients."""
        node = self.node(name)
        if node.running:
            assert node.proc is not None
            node.proc.kill()
            await node.proc.wait()

    async def restart(self, name: str) -> None:
        """Start a stopped or killed node again, on its ports and store; return once the cluster
        is healthy again."""
        node = self.node(name)
        if not node.running:
            await self._spawn(node)
        await self.ready()

    async def stream_leader(self, stream: str) -> str | None:
        """The name of the node leading `stream` now, as the running nodes say; None in an election."""
        async with aiohttp.ClientSession() as http:
            for node in self.nodes:
                if not node.running:
                    continue
                jsz = await _get(http, f"{node.monitor}/jsz?streams=true")
                for account in (jsz or {}).get("account_details") or []:
                    for detail in account.get("stream_detail") or []:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if detail.get("name") == stream and leader:
                            return str(leader)
        return None

    async def stream_replicas(self, stream: str) -> int | None:
        """How many nodes hold `stream` (its leader and followers), as the running nodes say."""
        async with aiohttp.ClientSession() as http:
            for node in self.nodes:
                if not node.running:
                    continue
                jsz = await _get(http, f"{node.monitor}/jsz?streams=true&config=true")
                for account in (jsz or {}).get("account_details") or []:
                    for detail in account.get("stream_detail") or []:
                        if detail.get("name") == stream:
                            return int(detail["config"]["num_replicas"])
        return None

    async def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)  # a paused node cannot stop
                    node.proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await node.proc.wait()
                except TimeoutError:
                    node.proc.kill()
                    await node.proc.wait()


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def _healthy(http: aiohttp.ClientSession, node: Node) -> bool:
    health = await _get(http, f"{node.monitor}/healthz")
    return bool(health) and health.get("status") == "ok"


async def _until(probe: Any, deadline: float, what: str, node: Node | None) -> None:
    while not await probe():
        if node is not None and not node.running:
            raise RuntimeError(f"{node.name} exited:\n{node.log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
