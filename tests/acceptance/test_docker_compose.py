"""The container deployment, checked without a container engine.

``docker-compose.yml`` is read with PyYAML and cross-checked against the
repository, the replicator's own configuration loader and metric registry,
Prometheus' and Grafana's files. The ``Dockerfile`` is parsed into stages and
instructions and checked for what the image promises (multi-stage, pinned base,
unprivileged user, entrypoint, health check, a build context that has what the
COPY lines take). Then the build stage's own RUN lines, taken from the file,
run in a scratch root: the venv they produce must hold a working replicator
once the sources are gone (the runtime stage has no ``/src``). The health
check's command runs for real against the replicator's health endpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY
from shiputil import (
    REPO,
    Stage,
    base_python,
    clean_env,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    healthcheck_command,
    must,
    parse_dockerfile,
    parse_env,
    run,
)

from replicator import metrics
from replicator.config import load_config, parse_address

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PLACEHOLDER_PASSWORD = "compose-test-password"

# --------------------------------------------------------------------------- compose helpers

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        operator, argument = match[2], match[3] or ""
        value = env.get(name)
        missing = value is None or (value == "" and operator and operator.startswith(":"))
        if operator and operator.endswith("-") and missing:
            return interpolate(argument, env)
        if operator and operator.endswith("?") and missing:
            raise AssertionError(f"compose refuses to start: {name}: {argument}")
        if operator and operator.endswith("+"):
            return "" if missing else argument
        return value or ""

    return _VARIABLE.sub(substitute, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or list form), placeholders filled in."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env = {"POSTGRES_PASSWORD": PLACEHOLDER_PASSWORD}
    return {str(k): interpolate(str(v), env) for k, v in raw.items()}


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax;
    sources with their compose defaults substituted."""
    out = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = str(entry.get("source", "")), str(entry["target"])
            read_only = bool(entry.get("read_only", False))
        else:
            parts = interpolate(str(entry), {}).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        out.append((interpolate(source, {}), target, read_only))
    return out


def host_file_for(svc: dict[str, Any], container_path: str) -> Path | None:
    """The repository file bind-mounted at ``container_path``, if any."""
    for source, target, _ro in mounts(svc):
        if target == container_path and source.startswith((".", "/")):
            return (REPO / source).resolve()
    return None


# --------------------------------------------------------------------------- compose


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "replicator", "prometheus", "grafana"} <= set(services)
    # Grafana is optional: only with `--profile grafana`; the rest start by default.
    assert service(compose, "grafana").get("profiles") == ["grafana"]
    for name in ("postgres", "replicator", "prometheus"):
        assert not service(compose, name).get("profiles"), name


def test_everything_the_services_mount_or_build_exists(compose: dict[str, Any]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    user_supplied = []
    for name, svc in compose["services"].items():
        for entry in svc.get("volumes") or []:
            text = entry if isinstance(entry, str) else str(entry.get("source", ""))
            source = mounts({"volumes": [entry]})[0][0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: named volume {source!r} is not declared"
                continue
            if text.startswith("$"):
                # Chosen by whoever runs the stack (APP_DATA_DIR: the app's SQLite
                # folder): not part of the repository.
                user_supplied.append((name, text))
                continue
            path = (REPO / source).resolve()
            assert path.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            assert path.exists(), f"{name}: mounts {source}, which does not exist"
        build = svc.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), f"{name}: no Dockerfile"
        for env_file in svc.get("env_file") or []:
            assert (REPO / env_file).is_file(), f"{name}: env_file {env_file} missing"
    assert user_supplied == [("replicator", "${APP_DATA_DIR:-./var}:/data")]


def test_replicator_starts_after_postgres_is_healthy(compose: dict[str, Any]) -> None:
    depends = service(compose, "replicator")["depends_on"]
    assert isinstance(depends, dict), "depends_on must be the long form to carry a condition"
    assert depends["postgres"] == {"condition": "service_healthy"}

    postgres = service(compose, "postgres")
    check = postgres["healthcheck"]
    test = check["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test[1:])
    env = environment(postgres)
    # The readiness probe asks about the database the replicator will use.
    assert f"-U {env['POSTGRES_USER']}" in test[1] and f"-d {env['POSTGRES_DB']}" in test[1]
    for key in ("interval", "timeout", "retries"):
        assert key in check, key


def test_postgres_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    data = [s for s, t, _ in mounts(postgres) if t == "/var/lib/postgresql/data"]
    assert len(data) == 1
    assert data[0] in (compose.get("volumes") or {}), "a declared named volume"
    assert postgres["image"].startswith("postgres:15"), "the PostgreSQL major version we test"
    # The password must come from the operator, never from the file.
    raw_password = str(postgres["environment"]["POSTGRES_PASSWORD"])
    assert raw_password.startswith("${POSTGRES_PASSWORD:?")


def test_replicator_environment_points_at_the_stack(compose: dict[str, Any]) -> None:
    postgres, replicator = service(compose, "postgres"), service(compose, "replicator")
    pg_env, env = environment(postgres), environment(replicator)
    assert {"DATABASE_URL", "DATABASE_PATH"} <= set(env)

    url = urlsplit(env["DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres", "the compose service name"
    assert url.port == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == PLACEHOLDER_PASSWORD, "the same POSTGRES_PASSWORD variable"
    assert url.path == f"/{pg_env['POSTGRES_DB']}"

    # DATABASE_PATH lies in a folder mounted into the container, read-write
    # (trigger capture writes the change log into the SQLite file).
    db_path = env["DATABASE_PATH"]
    mounted = [
        (t, ro) for _s, t, ro in mounts(replicator) if db_path.startswith(t.rstrip("/") + "/")
    ]
    assert mounted == [("/data", False)], mounted


def image_env() -> dict[str, str]:
    return dockerfile_stages(parse_dockerfile(DOCKERFILE.read_text()))[-1].env()


def test_replicator_configuration_loads_as_the_container_sees_it(
    compose: dict[str, Any],
) -> None:
    """The image's ENV, then the service's environment, then its command line:
    the replicator's own loader accepts the combination (it refuses unknown
    REPLICATOR_* variables and bad values)."""
    replicator = service(compose, "replicator")
    command = replicator["command"]
    assert command[-1] == "run" and command[0] in ("--config", "-c")
    config_file = host_file_for(replicator, command[1])
    assert config_file is not None and config_file.is_file(), f"{command[1]} is not mounted"

    env = {**image_env(), **environment(replicator)}
    env = {k: v for k, v in env.items() if k != "PATH"}
    config = load_config(config_file, env=env)
    assert str(config.source.path) == env["DATABASE_PATH"] == "/data/app.db"
    assert config.target.url is not None
    assert config.target.url.reveal() == env["DATABASE_URL"]
    host, port = parse_address(config.metrics.address)
    assert (host, port) == ("0.0.0.0", 9479), "reachable from the prometheus container"


def test_prometheus_scrapes_the_replicator(compose: dict[str, Any]) -> None:
    prometheus = service(compose, "prometheus")
    config_path = host_file_for(prometheus, "/etc/prometheus/prometheus.yml")
    assert config_path is not None, "prometheus.yml is not mounted where Prometheus reads it"
    config = yaml.safe_load(config_path.read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "replicator:9479" in targets
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert "replicator" in jobs, "the alert rules select job=replicator"

    # The port is the one the replicator listens on in the stack and the image.
    _host, port = parse_address(
        environment(service(compose, "replicator"))["REPLICATOR_METRICS_ADDRESS"]
    )
    assert port == 9479
    stages = dockerfile_stages(parse_dockerfile(DOCKERFILE.read_text()))
    assert [i.args for i in stages[-1].all("EXPOSE")] == [["9479"]]

    # Every rule file Prometheus loads is mounted, and parses as rule groups.
    for rule_file in config.get("rule_files", []):
        host = host_file_for(prometheus, rule_file)
        assert host is not None and host.is_file(), f"{rule_file} is not mounted"
        rules = yaml.safe_load(host.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                assert rule.get("alert") and rule.get("expr"), rule
    # Ports are published on the loopback interface only.
    for name in ("prometheus", "grafana"):
        for mapping in service(compose, name).get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (name, mapping)


def registered_metric_names() -> set[str]:
    """Every sample name the replicator's registry can expose."""
    assert metrics.UP is not None  # the module's collectors are registered on import
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def test_alerts_and_dashboard_only_use_metrics_the_replicator_exports() -> None:
    known = registered_metric_names()
    for path in (
        REPO / "config/prometheus/alerts.yml",
        REPO / "config/grafana/replicator.json",
    ):
        used = set(re.findall(r"\breplicator_[a-z0-9_]+", path.read_text()))
        assert used, f"{path.name} uses no replicator metric"
        assert used <= known, f"{path.name}: unknown metrics {sorted(used - known)}"


def test_grafana_is_provisioned_with_the_stacks_prometheus(compose: dict[str, Any]) -> None:
    grafana = service(compose, "grafana")
    sources_dir = host_file_for(grafana, "/etc/grafana/provisioning")
    assert sources_dir is not None and sources_dir.is_dir()
    datasources = yaml.safe_load((sources_dir / "datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((sources_dir / "dashboards/replicator.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboard_path = host_file_for(grafana, f"{folder}/replicator.json")
    assert dashboard_path is not None, "the dashboard is not mounted where the provider looks"
    dashboard = json.loads(dashboard_path.read_text())
    uids = {
        str(panel["datasource"]["uid"])
        for panel in dashboard["panels"]
        if isinstance(panel.get("datasource"), dict)
    }
    assert uids, "panels name their data source"
    assert uids <= {source["uid"], "${datasource}"}, uids


# --------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(parse_dockerfile(DOCKERFILE.read_text()))


def test_dockerfile_parser_reads_this_file(stages: list[Stage]) -> None:
    keywords = {i.keyword for s in stages for i in s.instructions}
    assert keywords <= {
        "RUN", "COPY", "ENV", "WORKDIR", "USER", "VOLUME", "EXPOSE",
        "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL", "ARG",
    }  # fmt: skip


def test_multi_stage_with_a_pinned_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        _repository, _, tag = stage.image.partition(":")
        assert tag and tag != "latest", f"{stage.image}: pin the base image"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{stage.image}: pin the full version"
    # The venv built in one stage runs in the last: same interpreter, same path.
    assert len({s.image for s in stages}) == 1, "build and runtime bases must match"
    python = re.match(r"^python:(\d+)\.(\d+)\.", stages[-1].image)
    assert python and (int(python[1]), int(python[2])) >= (3, 11), "requires-python >= 3.11"
    final = stages[-1]
    copied_from = {i.flags["from"] for i in final.all("COPY") if "from" in i.flags}
    earlier = {s.name for s in stages[:-1]}
    assert copied_from and copied_from <= earlier
    # The runtime stage installs nothing: no compiler, no pip run, no sources.
    for instruction in final.all("RUN"):
        assert "pip" not in instruction.raw and "apt-get" not in instruction.raw


def test_runs_as_an_unprivileged_user(stages: list[Stage]) -> None:
    final = stages[-1]
    order = [i.keyword for i in final.instructions]
    assert "USER" in order and order.index("USER") < order.index("ENTRYPOINT")
    (user,) = final.all("USER")
    name = user.args[0].split(":")[0]
    assert name not in ("root", "0")
    created = " ".join(i.raw for i in final.all("RUN"))
    match = re.search(rf"useradd\b[^&;]*--uid (\d+)[^&;]*\b{re.escape(name)}\b", created)
    assert match, f"user {name!r} is not created in the image"
    assert int(match[1]) >= 1000
    assert "--shell /usr/sbin/nologin" in created


def test_entrypoint_cmd_and_path(stages: list[Stage]) -> None:
    final = stages[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert entrypoint.exec_form and entrypoint.args == ["replicator"]
    assert cmd.exec_form and cmd.args == ["run"]
    # `replicator` resolves on PATH to the venv copied from the build stage.
    (venv_copy,) = [i for i in final.all("COPY") if i.flags.get("from")]
    venv = venv_copy.args[-1]
    assert final.env()["PATH"].split(":")[0] == f"{venv}/bin"


def test_healthcheck_asks_healthz_on_the_metrics_port(stages: list[Stage]) -> None:
    final = stages[-1]
    (check,) = final.all("HEALTHCHECK")
    command = healthcheck_command(check)
    assert command[0] == "python", "exec form, with the image's interpreter"
    assert "/healthz" in command[-1]
    _host, port = parse_address(final.env()["REPLICATOR_METRICS_ADDRESS"])
    assert f"http://127.0.0.1:{port}/healthz" in command[-1]
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in check.raw, option


@pytest.fixture
def health_server() -> Iterator[tuple[metrics.Health, int]]:
    health = metrics.Health(stuck_after=60.0, lag_ready=5.0)
    server = metrics.MetricsServer("127.0.0.1", 0, health).start()
    try:
        yield health, server.port
    finally:
        server.stop()


def test_healthcheck_command_judges_the_real_endpoint(
    stages: list[Stage], health_server: tuple[metrics.Health, int]
) -> None:
    """Docker's rule: exit 0 healthy, 1 unhealthy. The file's own command, run
    against the replicator's health server (on a free port instead of 9479)."""
    health, port = health_server
    command = healthcheck_command(stages[-1].all("HEALTHCHECK")[0])
    _host, image_port = parse_address(stages[-1].env()["REPLICATOR_METRICS_ADDRESS"])

    def probe(at_port: int) -> int:
        argv = [sys.executable, *command[1:-1], command[-1].replace(str(image_port), str(at_port))]
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode

    health.tick(connected=True, lag_seconds=0.0, state="streaming")
    assert probe(port) == 0
    health.last_tick = time.monotonic() - 3600  # the loop is stuck
    assert probe(port) == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert probe(closed) == 1  # nothing listening: unhealthy too, not "reserved" 2


def test_every_copy_source_is_in_the_build_context(stages: list[Stage]) -> None:
    rules = dockerignore_patterns(DOCKERIGNORE.read_text())
    checked = 0
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            if "from" in instruction.flags:
                continue
            for source in instruction.args[:-1]:
                matches = list(REPO.glob(source))
                assert matches, f"line {instruction.line}: COPY {source}: no such file"
                for match in matches:
                    rel = str(match.relative_to(REPO))
                    assert not dockerignored(rel, rules), f"{rel} is excluded by .dockerignore"
                    checked += 1
    assert checked >= 6


def test_dockerignore_keeps_local_state_out() -> None:
    rules = dockerignore_patterns(DOCKERIGNORE.read_text())
    for path in (".venv/bin/python", ".git/config", "replicator/__pycache__/cli.pyc", "var/app.db"):
        assert dockerignored(path, rules), path
    for path in ("replicator/cli.py", "migrations/env.py", "requirements.runtime.lock"):
        assert not dockerignored(path, rules), path


# --------------------------------------------------------------------------- build replay


def copy_into(source_rel: str, dest: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    """COPY semantics: a file into a folder (dest ending in /) or a folder's contents
    into dest; what .dockerignore excludes is not in the context, so not copied."""
    source = REPO / source_rel
    if source.is_file():
        target = dest / source.name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return
    for path in source.rglob("*"):
        rel = str(path.relative_to(REPO))
        if path.is_file() and not dockerignored(rel, rules):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_stage_commands_produce_a_working_replicator(
    stages: list[Stage], tmp_path: Path
) -> None:
    """Replays the build stage: its WORKDIR, ENV, COPY and RUN lines in order, the
    RUN lines verbatim except for the image's own paths (the venv the runtime
    stage copies, and WORKDIR), which move under a scratch root."""
    final = stages[-1]
    (venv_copy,) = [i for i in final.all("COPY") if i.flags.get("from")]
    build = next(s for s in stages if s.name == venv_copy.flags["from"])
    venv_in_image = venv_copy.args[0]
    rules = dockerignore_patterns(DOCKERIGNORE.read_text())
    root = tmp_path / "root"

    def host(path: str) -> Path:
        return root / path.lstrip("/")

    # `python` on PATH is the image's interpreter: ours (same minor version).
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python").symlink_to(base_python())
    env = clean_env()
    env["PATH"] = f"{shims}:{env['PATH']}"
    workdir = "/"
    image_paths: list[str] = [venv_in_image]
    ran: list[str] = []
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.args[0]
            image_paths.append(workdir)
            host(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            # Only PIP_NO_CACHE_DIR is left out: it keeps the image small, and
            # these tests use pip's cache.
            env.update(
                {k: v for k, v in parse_env(instruction.raw).items() if k != "PIP_NO_CACHE_DIR"}
            )
        elif instruction.keyword == "COPY":
            *sources, dest = instruction.args
            dest_path = host(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}")
            if dest.endswith("/") or len(sources) > 1:
                dest_path.mkdir(parents=True, exist_ok=True)
            for source in sources:
                copy_into(source, dest_path, rules)
        elif instruction.keyword == "RUN":
            command = instruction.args[0]
            for path in sorted(image_paths, key=len, reverse=True):
                command = re.sub(
                    rf"(?<![\w/.]){re.escape(path)}(?=[/\s]|$)", str(host(path)), command
                )
            stray = re.findall(
                r"(?:^|\s)(/(?!" + re.escape(str(root).lstrip("/")) + r")\S*)", command
            )
            assert not stray, f"RUN line {instruction.line} touches {stray} outside the image paths"
            ran.append(command)
            must(run(["/bin/sh", "-c", command], env=env, cwd=host(workdir), timeout=420))
        else:
            raise AssertionError(f"the replay does not know {instruction.keyword}")
    assert len(ran) >= 3, "venv, locked dependencies, the package"
    assert any("requirements.runtime.lock" in c for c in ran)

    # The runtime stage has the venv but not the sources.
    shutil.rmtree(host(workdir))
    venv = host(venv_in_image)
    path = ":".join(
        str(host(p)) if p.startswith(venv_in_image) else p
        for p in final.env()["PATH"].replace("$PATH", env["PATH"]).split(":")
    )
    entrypoint = shutil.which(final.all("ENTRYPOINT")[0].args[0], path=path)
    assert entrypoint == str(venv / "bin" / "replicator")
    runtime_env = clean_env(PATH=path, HOME=str(tmp_path))
    version = must(run([entrypoint, "--version"], env=runtime_env, cwd=tmp_path))
    assert version.stdout.startswith("replicator, version ")
    cmd = final.all("CMD")[0].args
    helped = must(run([entrypoint, *cmd, "--help"], env=runtime_env, cwd=tmp_path))
    assert helped.stdout.startswith(f"Usage: replicator {' '.join(cmd)} ")
    where = must(
        run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import replicator.state.migrations as s; print(s.migrations_dir())",
            ],
            env=runtime_env,
            cwd=tmp_path,
        )
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    assert (Path(where.stdout.strip()) / "versions").is_dir()
