"""docker-compose.yml, .env.example and the Dockerfile agree with the code and the contract.

Pure reading: no Docker, no services. The compose file is checked as written, the way
`docker compose config` would see it (YAML merge keys resolved, `${VAR:-default}` interpolated
from the example settings where a value uses it).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

from contract.errors import BadInput
from contract.settings import Settings
from producer.cli import main
from producer.webhook import check_secret

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# App services run our image, built from this directory; the others run upstream images.
APP_SERVICES = sorted(name for name, spec in SERVICES.items() if "build" in spec)
# The listening ports ARCHITECTURE.md and the CLI defaults give each service.
CONTRACT_PORTS = {
    "webhook": 8000,
    "api": 8001,
    "simulator": 8080,
    "erp-simulator": 8090,
    "flower": 5555,
}
# Worker service -> (Celery app module, the contract's queue name).
CONTRACT_WORKERS = {
    "producer-worker": ("producer", "pleo-export-producer"),
    "erp-worker": ("consumers", "pleo-export-items"),
}


def argv(service: str) -> list[str]:
    """The service's command as an argument list (compose accepts a list or a string)."""
    command = SERVICES[service]["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def option_value(args: list[str], option: str) -> str | None:
    """The value of ``--option V`` or ``--option=V`` in ``args``, else None."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
    return None


def published_ports(service: str) -> list[tuple[int, int]]:
    """(host, container) port pairs the service publishes, short or long syntax."""
    pairs = []
    for spec in SERVICES[service].get("ports", []):
        if isinstance(spec, dict):
            host, target = spec.get("published", ""), spec["target"]
        else:
            *rest, target = str(spec).split(":")
            host = rest[-1] if rest else ""
        container = int(str(target).partition("/")[0])
        pairs.append((int(host) if str(host) else container, container))
    return pairs


def env_example() -> dict[str, str]:
    """``.env.example`` as Compose reads it: ``NAME=value`` lines, ``#`` lines are comments."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example line is not NAME=value: {line!r}"
            assert name not in values, f"{name} is set twice in .env.example"
            values[name.strip()] = value
    return values


class RecordingEnv(Mapping[str, str]):
    """A read-only environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def names_settings_reads() -> set[str]:
    """Every variable ``Settings.from_env`` looks up, with an empty and with the example env."""
    read: set[str] = set()
    for values in ({}, env_example()):
        env = RecordingEnv(values)
        Settings.from_env(env)
        read |= env.read
    return read


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` substitution, defaults nested or not."""
    out, i = [], 0
    while (start := text.find("${", i)) != -1:
        out.append(text[i:start])
        depth, j = 1, start + 2
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        name, _, default = text[start + 2 : j - 1].partition(":-")
        assert re.fullmatch(r"[A-Za-z_]\w*", name), f"unsupported interpolation {text!r}"
        out.append(env.get(name) or interpolate(default, env))
        i = j
    out.append(text[i:])
    return "".join(out)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            steps.append((keyword.upper(), rest.strip()))
    return steps


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (or a folder above it) matches a .dockerignore pattern."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch(prefix, pattern.strip("/")) for prefix in prefixes):
            return True
    return False


def test_app_commands_start_with_an_installed_entry_point() -> None:
    """Each app service runs a console script of the package or a Celery app that imports."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert APP_SERVICES, "no service builds the image"
    for service in APP_SERVICES:
        args = argv(service)
        if args[0] == "celery":
            module = option_value(args, "-A")
            assert module is not None, f"{service}: celery without -A"
            assert importlib.util.find_spec(module) is not None, f"{service}: no module {module}"
        else:
            assert args[0] in scripts, f"{service}: {args[0]} is not in [project.scripts]"


def test_pleo_export_subcommands_and_options_exist() -> None:
    """Every pleo-export subcommand and --option a service uses is defined by the CLI."""
    for service in APP_SERVICES:
        args = argv(service)
        if args[0] != "pleo-export":
            continue
        command = main.commands.get(args[1])
        assert isinstance(command, click.Command), f"{service}: no subcommand {args[1]!r}"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for arg in args[2:]:
            if arg.startswith("-"):
                option = arg.partition("=")[0]
                assert option in known, f"{service}: {args[1]} has no option {option}"


def test_published_ports_match_the_command_and_the_contract() -> None:
    """Each listening service publishes exactly the port its command and the contract name."""
    published = {name for name, spec in SERVICES.items() if spec.get("ports")}
    assert published == set(CONTRACT_PORTS)
    for service, port in CONTRACT_PORTS.items():
        args = argv(service)
        assert published_ports(service) == [(port, port)], service
        assert option_value(args, "--port") == str(port), service
        if args[0] == "pleo-export":
            default = next(p.default for p in main.commands[args[1]].params if p.name == "port")
            assert default == port, f"pleo-export {args[1]} --port defaults to {default}"


def test_every_service_with_a_port_has_a_healthcheck_on_it() -> None:
    """A service that listens is only healthy when its own port answers."""
    for service, spec in SERVICES.items():
        for _, port in published_ports(service):
            check = spec.get("healthcheck", {}).get("test")
            assert check, f"{service} publishes port {port} but has no healthcheck"
            assert check[0] in {"CMD", "CMD-SHELL"}, service
            assert str(port) in " ".join(check[1:]), f"{service}: healthcheck misses {port}"
    for service in ("webhook", "api"):
        assert "/healthz" in " ".join(SERVICES[service]["healthcheck"]["test"]), service


def test_services_wait_for_a_healthy_redis() -> None:
    """Every service but Redis starts only once `redis-cli ping` answers."""
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for service, spec in SERVICES.items():
        if service != "redis":
            assert spec["depends_on"]["redis"] == {"condition": "service_healthy"}, service


def test_redis_keeps_its_data_and_never_evicts() -> None:
    """The compose Redis has AOF on a volume and noeviction: the start-up check accepts it."""
    args = argv("redis")
    assert args[0] == "redis-server"
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    assert Settings.from_env(env_example()).redis_ephemeral is False


def test_app_services_share_one_image_and_the_env_file() -> None:
    """All app services build this directory into one image and read their settings from .env."""
    assert set(APP_SERVICES) == {*CONTRACT_WORKERS, "webhook", "api", "simulator", "erp-simulator"}
    for service in APP_SERVICES:
        spec = SERVICES[service]
        assert spec["build"] == ".", service
        assert spec["image"] == "pleo-export-producer:local", service
        assert spec["env_file"] == ".env", service


@pytest.mark.parametrize("service", sorted(CONTRACT_WORKERS))
def test_workers_consume_the_contract_queues(service: str) -> None:
    """Each worker runs its Celery app on the contract's queue, which that app declares."""
    module, queue = CONTRACT_WORKERS[service]
    args = argv(service)
    assert args[:4] == ["celery", "-A", module, "worker"]
    assert option_value(args, "-Q") == queue
    app = importlib.import_module(module).app
    assert queue in {q.name for q in app.conf.task_queues}


def test_env_example_sets_only_variables_settings_reads() -> None:
    """No variable in .env.example is one the code ignores (a typo would be silently unused)."""
    assert set(env_example()) - names_settings_reads() == set()


def test_env_example_covers_every_variable_settings_reads() -> None:
    """Every variable Settings.from_env reads appears in .env.example."""
    assert names_settings_reads() - set(env_example()) == set()


def test_env_example_works_with_the_compose_services() -> None:
    """The example parses and its URLs name services; its webhook secret is a placeholder the
    receiver refuses, saying to set the subscription's own (the README says to set it)."""
    example = env_example()
    settings = Settings.from_env(example)
    with pytest.raises(BadInput, match="placeholder"):
        check_secret(settings.webhook_secret)
    assert settings.api_url == f"http://simulator:{CONTRACT_PORTS['simulator']}"
    assert settings.redis_url == settings.broker_url == "redis://redis:6379/0"
    assert settings.erp_database_url == "sqlite:////data/erp-journal.sqlite3"
    mounts = [str(v).split(":") for v in SERVICES["erp-worker"]["volumes"]]
    assert ["erp-journal", "/data"] in mounts
    assert "erp-journal" in COMPOSE["volumes"]


def test_env_example_tunables_are_the_code_defaults() -> None:
    """Apart from URLs and credentials set for compose, the example repeats the defaults."""
    settings = Settings.from_env(env_example())
    differs = {
        f.name for f in dataclasses.fields(Settings) if getattr(settings, f.name) != f.default
    }
    compose_specific = {"api_url", "api_token", "webhook_secret", "redis_url", "broker_url"}
    assert differs == compose_specific | {"erp_database_url"}


@pytest.mark.parametrize("broker", ["", "amqp://guest:guest@rabbitmq:5672//"])
def test_flower_watches_the_workers_broker(broker: str) -> None:
    """Flower's broker resolves from .env exactly as the workers' Settings.broker_url does."""
    env = {**env_example(), "CELERY_BROKER_URL": broker}
    flower_broker = interpolate(SERVICES["flower"]["environment"]["CELERY_BROKER_URL"], env)
    assert flower_broker == Settings.from_env(env).broker_url
    assert argv("flower")[:2] == ["celery", "flower"]


def test_enqueue_api_is_opt_in_and_on_loopback() -> None:
    """The api service starts only with --profile api, publishes on loopback, needs no other."""
    assert SERVICES["api"]["profiles"] == ["api"]
    assert SERVICES["api"]["ports"] == [
        f"127.0.0.1:{CONTRACT_PORTS['api']}:{CONTRACT_PORTS['api']}"
    ]
    for service, spec in SERVICES.items():
        assert "api" not in spec.get("depends_on", {}), service
    assert Settings.from_env(env_example()).enqueue_api_token is None


@pytest.mark.parametrize("simulator", ["simulator", "erp-simulator"])
def test_simulators_run_only_in_the_local_profile(simulator: str) -> None:
    """Each simulator starts only with --profile local, and no other service depends on it."""
    assert SERVICES[simulator]["profiles"] == ["local"]
    for service, spec in SERVICES.items():
        assert simulator not in spec.get("depends_on", {}), service


def test_the_erp_simulator_is_the_url_the_example_and_compose_name() -> None:
    """The ERP_HTTP_URL that .env.example and the compose file suggest is the erp-simulator
    service on its contract port, and with it the example's settings build the HTTP adapter."""
    from consumers.erp_http import from_settings

    url = f"http://erp-simulator:{CONTRACT_PORTS['erp-simulator']}"
    assert f"ERP_HTTP_URL={url}" in (ROOT / "docker-compose.yml").read_text()
    assert f"{url} is the ERP simulator" in (ROOT / ".env.example").read_text()
    assert argv("erp-simulator")[:2] == ["pleo-export", "simulate-erp"]
    env = {**env_example(), "ERP_ADAPTER": "consumers.erp_http:from_settings", "ERP_HTTP_URL": url}
    journal = from_settings(Settings.from_env(env))
    try:
        assert journal.limits.idempotency_key is True
        assert journal.limits.batch_size == 1
    finally:
        journal.close()


def test_dockerfile_installs_the_package_as_a_non_root_user() -> None:
    """The image pip-installs the package with its postgres extra and runs unprivileged."""
    steps = dockerfile()
    keywords = [keyword for keyword, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    install = next(
        i for i, (keyword, rest) in enumerate(steps) if keyword == "RUN" and "pip install" in rest
    )
    assert "--no-cache-dir" in steps[install][1]
    assert "[postgres]" in steps[install][1]
    users = [i for i, keyword in enumerate(keywords) if keyword == "USER"]
    assert users, "the Dockerfile never switches user"
    assert users[-1] > install
    assert steps[users[-1]][1].partition(":")[0] not in {"root", "0"}
    assert "ENTRYPOINT" not in keywords
    assert steps[keywords.index("CMD")][1] == '["pleo-export", "--help"]'


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    """Every COPY source exists and is sent to the builder; .env and .venv never are."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "negations are not modelled here"
    sources = [
        source
        for keyword, rest in dockerfile()
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source, patterns), f"COPY {source} is in .dockerignore"
    for private in (".env", ".venv", ".git", "erp-journal.sqlite3"):
        assert dockerignored(private, patterns), f"{private} would be sent to the builder"


def test_the_image_holds_every_package_the_project_installs() -> None:
    """Each top-level package that pyproject.toml installs is copied into the image's build."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in include["packages"]["find"]["include"]}
    copied = {
        rest.split()[-1].removeprefix("/src/")
        for keyword, rest in dockerfile()
        if keyword == "COPY" and rest.split()[-1].startswith("/src/")
    }
    assert packages <= copied, f"not in the image: {sorted(packages - copied)}"


def test_producer_worker_grace_covers_a_hand_back() -> None:
    """``docker stop`` waits longer than a producer run takes to hand its job back.

    tests/chaos/test_liveness.py proves the worker exits within 10 s of SIGTERM mid-run.
    """
    grace = SERVICES["producer-worker"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > 10


def test_flower_runs_the_current_release() -> None:
    """Flower's image is the release pinned here (2.2), not a floating tag."""
    assert SERVICES["flower"]["image"] == "mher/flower:2.2"


@pytest.mark.parametrize("service", sorted(CONTRACT_WORKERS))
def test_every_worker_exposes_its_metrics_port(service: str) -> None:
    """PLEO_METRICS_PORT set and exposed, a multiprocess directory on a tmpfs, checked by health.

    Exposed on the compose network (for Prometheus), not published on the host.
    """
    spec = SERVICES[service]
    env = spec["environment"]
    port = int(env["PLEO_METRICS_PORT"])
    assert Settings.from_env({"PLEO_METRICS_PORT": str(port)}).metrics_port == port
    assert [str(p) for p in spec["expose"]] == [str(port)]
    assert env["PROMETHEUS_MULTIPROC_DIR"] in spec["tmpfs"]
    assert f"127.0.0.1:{port}/metrics" in " ".join(spec["healthcheck"]["test"])
    assert not spec.get("ports"), f"{service} publishes a port on the host"


def test_worker_metrics_ports_differ() -> None:
    """Each worker type has its own metrics port, and none is a contract service's port."""
    ports = [int(SERVICES[s]["environment"]["PLEO_METRICS_PORT"]) for s in CONTRACT_WORKERS]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & set(CONTRACT_PORTS.values())
