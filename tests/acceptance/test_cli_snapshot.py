"""The ``replicator`` command as a user runs it: a subprocess with a plain environment.

Help on every command; a snapshot configured by DATABASE_PATH and DATABASE_URL
alone; every mistake a user can make ends in one line on stderr and a
documented exit code (``replicator/errors.py``), never a traceback; and a
password in the URL never shows up in any output.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import click
import psycopg
import pytest
from pgutil import password_role

from replicator.cli import main as cli_main
from replicator.errors import ConfigError, SourceError

CHINOOK = Path("/work/shared/corpus/chinook.sqlite")
if not CHINOOK.exists():  # a checkout next to shared/
    CHINOOK = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "chinook.sqlite"
CHINOOK_ROWS = 15607
PASSWORD = "Pw-s3cr3t-" + secrets.token_hex(4)


def replicator_command() -> list[str]:
    script = Path(sys.executable).with_name("replicator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "replicator.cli"]


def user_env(home: Path, **variables: str) -> dict[str, str]:
    """A login shell's worth of environment: no REPLICATOR_* or DATABASE_* from outside."""
    keep = ("PATH", "PYTHONPATH", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"HOME": str(home), "LANG": "C.UTF-8"})
    env.update(variables)
    return env


def run(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*replicator_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def writable_chinook(tmp_path: Path) -> Path:
    # The corpus has no write bits in CI: copy the bytes, then make the copy ours.
    path = tmp_path / "chinook.sqlite"
    shutil.copyfile(CHINOOK, path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is


# --------------------------------------------------------------------------- help


def command_paths(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from command_paths(sub, (*path, name))


ALL_COMMANDS = list(command_paths(cli_main))


def test_every_command_is_reachable_from_help(tmp_path: Path) -> None:
    assert ("snapshot",) in ALL_COMMANDS
    result = run("--help", env=user_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    listed = result.stdout.split("Commands:", 1)[1]
    assert isinstance(cli_main, click.Group)
    for name in cli_main.commands:
        assert f"\n  {name} " in listed, name


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "replicator")
def test_help_of_every_command(tmp_path: Path, path: tuple[str, ...]) -> None:
    result = run(*path, "--help", env=user_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith(f"Usage: {' '.join(('replicator', *path))} ")
    description = out.split("\n\n", 2)[1].strip()
    assert description, "a sentence saying what the command does"
    assert "Options:" in out and "--help" in out
    cmd: click.Command = cli_main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"option {param.opts} of {' '.join(path)} has no help"
            assert param.opts[-1] in out


def test_snapshot_help_documents_resume_and_its_options(tmp_path: Path) -> None:
    out = run("snapshot", "--help", env=user_env(tmp_path), cwd=tmp_path).stdout
    for option in ("--restart", "--table", "--chunk-rows", "--on-error"):
        assert option in out
    assert "deadletter|stop" in out


# --------------------------------------------------------------------------- working runs


def test_snapshot_with_only_the_apps_environment_variables(tmp_path: Path, pg_dsn: str) -> None:
    source = writable_chinook(tmp_path)
    env = user_env(tmp_path, DATABASE_PATH=str(source), DATABASE_URL=pg_dsn)
    assert not list(tmp_path.glob("*.toml"))  # no config file anywhere near

    result = run("snapshot", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    total = next(line for line in result.stdout.splitlines() if line.startswith("total"))
    assert total.split()[1:4] == [str(CHINOOK_ROWS), str(CHINOOK_ROWS), "0"]
    with psycopg.connect(pg_dsn) as pg:
        count = pg.execute('SELECT count(*) FROM "PlaylistTrack"').fetchone()
    assert count == (8715,)

    # Run again: every table is done; nothing is copied twice.
    again = run("snapshot", env=env, cwd=tmp_path)
    assert again.returncode == 0
    assert again.stdout.count("(done earlier)") == 11


@pytest.fixture
def password_url(pg_admin_dsn: str, pg_dsn: str) -> Iterator[tuple[str, str]]:
    """(URL, key=value DSN) for a throwaway login role with a password, owning nothing
    but allowed to create tables in this test's database."""
    with password_role(pg_admin_dsn, pg_dsn, PASSWORD) as urls:
        yield urls


@pytest.mark.parametrize("form", ["url", "keywords"])
def test_password_of_a_working_url_never_appears(
    tmp_path: Path, password_url: tuple[str, str], pg_dsn: str, form: str
) -> None:
    url = password_url[0] if form == "url" else password_url[1]
    source = writable_chinook(tmp_path)
    env = user_env(tmp_path, DATABASE_PATH=str(source), DATABASE_URL=url)
    first = run("--log-level", "debug", "snapshot", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:].replace(PASSWORD, "<PASSWORD>")
    second = run("--log-level", "debug", "snapshot", "--restart", env=env, cwd=tmp_path)
    assert second.returncode == 0
    for output in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert PASSWORD not in output
        assert quote(PASSWORD) not in output
    with psycopg.connect(pg_dsn) as pg:
        owner = pg.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'Track'").fetchone()
    assert owner is not None and owner[0].startswith("rt_pw_")  # it really connected as the role


# --------------------------------------------------------------------------- mistakes


def unreachable(password: str = PASSWORD) -> str:
    return f"postgresql://app:{password}@127.0.0.1:{closed_port()}/app"


MISTAKES = {
    # name: (how to set it up, expected exit code, words the one line must hold)
    "unknown config key": (
        "config",
        ConfigError.exit_code,
        ["chunk_row", "did you mean 'chunk_rows'"],
    ),
    "malformed config file": ("malformed", ConfigError.exit_code, ["not valid TOML"]),
    "missing config file": ("missing-config", ConfigError.exit_code, ["does not exist"]),
    "unknown environment variable": (
        "env",
        ConfigError.exit_code,
        ["REPLICATOR_SNAPSHOT_CHUNK_ROW", "did you mean"],
    ),
    "malformed URL": ("bad-url", ConfigError.exit_code, ["malformed"]),
    "not a PostgreSQL URL": ("mysql-url", ConfigError.exit_code, ["not a PostgreSQL URL"]),
    "no target at all": ("no-url", ConfigError.exit_code, ["DATABASE_URL"]),
    "unreachable target": ("unreachable", ConfigError.exit_code, ["cannot connect", "app:***@"]),
    "unreachable target, password with '?'": (
        "unreachable-odd",
        ConfigError.exit_code,
        ["cannot connect"],
    ),
    "source is not SQLite": ("not-sqlite", SourceError.exit_code, ["not a SQLite database"]),
    "source does not exist": ("no-source", SourceError.exit_code, ["does not exist"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_end_in_one_line_and_a_documented_exit_code(tmp_path: Path, mistake: str) -> None:
    setup, code, words = MISTAKES[mistake]
    source = writable_chinook(tmp_path)
    password = PASSWORD + "?x" if setup == "unreachable-odd" else PASSWORD
    variables = {"DATABASE_PATH": str(source), "DATABASE_URL": unreachable(password)}
    args: list[str] = []
    if setup == "config":
        (tmp_path / "bad.toml").write_text("[snapshot]\nchunk_row = 5\n")
        args = ["-c", "bad.toml"]
    elif setup == "malformed":
        (tmp_path / "broken.toml").write_text("[snapshot\nchunk_rows = 5\n")
        args = ["-c", "broken.toml"]
    elif setup == "missing-config":
        args = ["-c", str(tmp_path / "nowhere.toml")]
    elif setup == "env":
        variables["REPLICATOR_SNAPSHOT_CHUNK_ROW"] = "5"
    elif setup == "bad-url":
        variables["DATABASE_URL"] = f"postgresql://app:{PASSWORD}@[::1/app"
    elif setup == "mysql-url":
        variables["DATABASE_URL"] = f"mysql://app:{PASSWORD}@127.0.0.1/app"
    elif setup == "no-url":
        del variables["DATABASE_URL"]
    elif setup == "not-sqlite":
        bogus = tmp_path / "app.db"
        bogus.write_text("this is a text file, not a database\n" * 100)
        variables["DATABASE_PATH"] = str(bogus)
    elif setup == "no-source":
        variables["DATABASE_PATH"] = str(tmp_path / "missing.db")

    result = run(*args, "snapshot", env=user_env(tmp_path, **variables), cwd=tmp_path)

    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("replicator: error: "), line
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in line, line
    assert password not in result.stderr
    assert PASSWORD not in result.stderr
    assert quote(PASSWORD) not in result.stderr
