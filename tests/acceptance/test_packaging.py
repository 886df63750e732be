"""The package as it ships: a wheel and an sdist built from this checkout, the
wheel installed into a fresh virtual environment with nothing but the runtime
lock file, and the installed command working there, on its own.

``replicator init`` from that environment proves the Alembic migrations are
inside the wheel (``replicator/_migrations``): the checkout's ``migrations/``
is nowhere on that environment's path. Building uses pip's cache and the
package registry (for the build backend and the ``build`` frontend).
"""

from __future__ import annotations

import re
import sqlite3
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
import pytest
from psycopg import sql
from shiputil import REPO, clean_env, make_venv, must, run

from replicator import __version__
from replicator.cli import main as cli_main
from replicator.state.migrations import head_revision

# Building and installing takes ~50 s in all (two builds, two fresh venvs).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BUILD = "build==1.6.1"  # the PyPA build frontend (sdist, then a wheel from it)


def repo_migration_files() -> set[str]:
    """The migration files a deployment needs, relative to ``migrations/``."""
    root = REPO / "migrations"
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".py", ".mako") and "__pycache__" not in p.parts
    }


@dataclass(frozen=True)
class Dists:
    pip_wheel: Path  # `pip wheel --no-deps .`: what the Dockerfile's `pip install .` builds
    sdist: Path  # `python -m build`: the sdist ...
    sdist_wheel: Path  # ... and the wheel built from that sdist (as PyPI users get it)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dists")
    must(
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", str(REPO), "-w", str(out / "pip")],
            timeout=300,
        )
    )
    (pip_wheel,) = (out / "pip").glob("replicator-*.whl")
    # pip cannot make an sdist: the standard frontend, pinned, in a venv of its own.
    tools = make_venv(out / "tools")
    must(run([str(tools / "python"), "-m", "pip", "install", "--quiet", BUILD], timeout=300))
    must(
        run(
            [str(tools / "python"), "-m", "build", "--outdir", str(out / "build"), str(REPO)],
            timeout=300,
        )
    )
    (sdist,) = (out / "build").glob("replicator-*.tar.gz")
    (sdist_wheel,) = (out / "build").glob("replicator-*.whl")
    return Dists(pip_wheel, sdist, sdist_wheel)


@dataclass(frozen=True)
class Installed:
    bin: Path
    site_packages: Path

    @property
    def replicator(self) -> str:
        return str(self.bin / "replicator")


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The pip-built wheel in a fresh venv: runtime lock first, then the wheel --no-deps."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    bin_dir = make_venv(venv)
    lock = REPO / "requirements.runtime.lock"
    must(run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-r", str(lock)]))
    must(
        run(
            [
                *(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps"),
                str(dists.pip_wheel),
            ]
        )
    )
    (site_packages,) = (venv / "lib").glob("python3.*/site-packages")
    return Installed(bin_dir, site_packages)


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


# --------------------------------------------------------------------------- contents


@pytest.mark.parametrize("which", ["pip_wheel", "sdist_wheel"])
def test_wheel_carries_migrations_and_package_data(dists: Dists, which: str) -> None:
    wheel: Path = getattr(dists, which)
    names = wheel_names(wheel)
    expected = {f"replicator/_migrations/{name}" for name in repo_migration_files()}
    assert expected <= names, sorted(expected - names)
    assert "replicator/_migrations/env.py" in names
    assert "replicator/_migrations/script.py.mako" in names
    for data in ("postgres_schema.sql", "sqlite_schema.sql"):
        assert f"replicator/data/reference_app/{data}" in names
    assert "replicator/py.typed" in names
    # Nothing of the workshop: no tests, benchmarks, bytecode or top-level migrations.
    assert not [n for n in names if n.startswith(("tests/", "bench/", "migrations/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_metadata_and_entry_point(dists: Dists) -> None:
    with zipfile.ZipFile(dists.pip_wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert f"\nVersion: {__version__}\n" in metadata
    assert "\nRequires-Python: >=3.11\n" in metadata
    requires = {
        re.split(r"[\s<>=!~;\[]", line.split(": ", 1)[1], maxsplit=1)[0].lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    }
    assert {"sqlalchemy", "alembic", "psycopg", "click", "prometheus-client"} <= requires
    assert re.search(r"^replicator = replicator\.cli:main$", entry_points, re.M), entry_points


def test_sdist_includes_migrations_and_configs(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    expected = {f"migrations/{name}" for name in repo_migration_files()}
    assert expected <= names, sorted(expected - names)
    for needed in (
        "pyproject.toml",
        "README.md",
        "replicator/cli/__init__.py",
        "replicator/data/reference_app/postgres_schema.sql",
        "config/replicator.example.toml",
        "config/systemd/replicator.service",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith((".venv/", ".git/", "tests/"))]
    assert not [n for n in names if "__pycache__" in n]


def test_runtime_lock_pins_what_the_dev_lock_pins() -> None:
    """One set of versions: the image's lock agrees with the developers' lock."""

    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
            if match:
                found[match[1].lower().replace("_", "-")] = match[2]
        return found

    runtime, dev = pins(REPO / "requirements.runtime.lock"), pins(REPO / "requirements.lock")
    assert runtime, "requirements.runtime.lock pins nothing"
    assert {name: dev.get(name) for name in runtime} == runtime


# --------------------------------------------------------------------------- installed


def test_installed_wheel_is_complete_and_consistent(installed: Installed) -> None:
    # pip check: the runtime lock satisfies every requirement of the wheel.
    must(run([str(installed.bin / "python"), "-m", "pip", "check"]))
    probe = must(
        run(
            [
                str(installed.bin / "python"),
                "-c",
                "import replicator, replicator.state.migrations as s; "
                "print(replicator.__file__); print(s.migrations_dir())",
            ],
            cwd=installed.bin,
        )
    )
    module, migrations = (Path(line) for line in probe.stdout.split())
    assert module.is_relative_to(installed.site_packages), module
    assert migrations == installed.site_packages / "replicator" / "_migrations"


def test_installed_version_and_help(installed: Installed, tmp_path: Path) -> None:
    version = must(run([installed.replicator, "--version"], cwd=tmp_path))
    assert version.stdout.strip() == f"replicator, version {__version__}"
    helped = must(run([installed.replicator, "--help"], cwd=tmp_path))
    assert helped.stdout.startswith("Usage: replicator ")
    listed = helped.stdout.split("Commands:", 1)[1]
    assert isinstance(cli_main, click.Group)
    for name in cli_main.commands:
        assert f"\n  {name} " in listed, name
    assert helped.stderr == ""


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
        "INSERT INTO items VALUES (1, 'one'), (2, 'two');"
    )
    conn.close()
    return path


def test_init_from_the_wheel(
    installed: Installed, pg_dsn: str, tiny_source: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()  # no checkout, no config file around
    env = clean_env(DATABASE_URL=pg_dsn, DATABASE_PATH=str(tiny_source))
    first = must(run([installed.replicator, "init"], env=env, cwd=workdir))
    head = head_revision()
    assert f"state schema 'replicator' migrated from nothing to {head}" in first.stdout
    assert "change capture installed on 1 table(s)" in first.stdout
    with psycopg.connect(pg_dsn) as conn:
        version = conn.execute(
            sql.SQL("SELECT version_num FROM {}").format(
                sql.Identifier("replicator", "alembic_version")
            )
        ).fetchall()
    assert version == [(head,)]
    again = must(run([installed.replicator, "init"], env=env, cwd=workdir))
    assert f"state schema 'replicator' is up to date (revision {head})" in again.stdout
