"""A private, disposable PostgreSQL server for the test suite and the demo.

Why not just use "the" PostgreSQL of the machine: tests that stop, crash and
restart the target must own their server, CI runners often have none, and the
demo should work on a laptop with nothing but ``pip install``. So we run our
own cluster in a fresh temporary directory: trust auth, 127.0.0.1 and a unix
socket only, durability switched off (nothing in it is worth keeping).

The binaries are found, and staged when need be, by
:mod:`replicator.demo.pgbinaries`. PostgreSQL refuses to run as root: when we
are root (containers, CI) initdb and postgres are started as an unprivileged
user (``nobody``). The subprocess switches uid/gid itself (no
``runuser``/``sudo`` needed), the data and socket directories are handed to
that user, and if it cannot reach the embedded binaries (a venv under
``/root`` is mode 0700) they are copied into the instance's own directory
first.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import psycopg

from replicator.demo.pgbinaries import (
    SERVER_BINARIES,
    Account,
    find_bindir,
    has_server_binaries,
    stage_embedded_binaries,
)
from replicator.errors import TargetError

StopMode = Literal["smart", "fast", "immediate"]

DEFAULT_RUN_AS = "nobody"
"""Who runs the server when we are root: present on every Unix, owns nothing."""

SUPERUSER = "postgres"
HOST = "127.0.0.1"

TEST_SETTINGS: Mapping[str, str] = {
    "listen_addresses": HOST,
    "max_connections": "200",
    "shared_buffers": "16MB",
    "huge_pages": "off",
    # Nothing here outlives the test run: skip flushing to disk. Commits are
    # still written to the OS before they are acknowledged (synchronous_commit
    # stays on), so stop("immediate") loses no acknowledged transaction and
    # crash tests see what a real server would keep.
    "fsync": "off",
    "full_page_writes": "off",
    # Autovacuum workers connect to template databases at random moments and
    # then make CREATE DATABASE ... TEMPLATE fail; tests want determinism.
    "autovacuum": "off",
    "jit": "off",
    "logging_collector": "off",
}
"""Server settings for tests; ``ThrowawayPostgres(settings=...)`` overrides them."""

_STOP_SIGNALS: Mapping[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 30
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


@dataclass(slots=True)
class _Runtime:
    """What cleanup needs, kept apart from its owner so that a finalizer can
    hold it without keeping the owner alive."""

    base_dir: Path
    process: subprocess.Popen[bytes] | None = None


def _terminate(process: subprocess.Popen[bytes], mode: StopMode, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(_STOP_SIGNALS[mode])
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Backends notice the postmaster's death and exit on their own.
            process.kill()
            process.wait()


def _teardown(runtime: _Runtime) -> None:
    if runtime.process is not None:
        _terminate(runtime.process, "fast", timeout=30.0)
        runtime.process = None
    shutil.rmtree(runtime.base_dir, ignore_errors=True)


class ThrowawayPostgres:
    """A PostgreSQL cluster that lives in a temporary directory and dies with it.

    ``with ThrowawayPostgres() as pg: ... pg.dsn ...`` initialises, starts and
    finally stops the server (fast shutdown) and deletes its directory.
    Without ``with``: ``start()`` ... ``close()``. In between, ``stop()`` and
    ``start()`` take the server down and up again, keeping its data, port and
    DSN, which is what outage and crash-recovery tests need
    (``stop("immediate")`` is a crash).
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        run_as: str = DEFAULT_RUN_AS,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if bindir is None:
            bindir = find_bindir()
        elif not has_server_binaries(bindir):
            raise TargetError(f"No PostgreSQL server binaries (initdb, postgres) in {bindir}")
        self.bindir = bindir
        self.server_bindir = bindir
        """Where the binaries run from: ``bindir``, or a copy inside ``base_dir``
        when we are root and the server account cannot reach ``bindir``."""
        self._parent_dir = base_dir
        self._settings = {**TEST_SETTINGS, **(settings or {})}
        self._account = Account.lookup(run_as) if os.geteuid() == 0 else None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._runtime: _Runtime | None = None
        self._finalizer: weakref.finalize[[_Runtime], ThrowawayPostgres] | None = None
        self._port: int | None = None

    # -- public surface ---------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise TargetError("ThrowawayPostgres has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """Superuser DSN over TCP; stays the same across stop()/start()."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding data, socket and log."""
        return self._require_runtime().base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        process = self._runtime.process if self._runtime else None
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> Self:
        """Initialise the cluster on first use, then start the server and wait
        until it accepts connections. Does nothing if it is running."""
        if self.running:
            return self
        if self._runtime is None:
            self._create_cluster()
        if self._port is not None:
            self._launch(self._port)
            return self
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                # Another process may take the free port before the server
                # binds it: try a new one, but only on the first start (the
                # DSN of a restarted server must not change).
                port = _free_port()
                try:
                    self._launch(port)
                except _PortInUseError:
                    if attempt == _PORT_ATTEMPTS:
                        raise
                    continue
                self._port = port
                break
        except BaseException:
            self.close()  # a cluster that never served anyone is not worth keeping
            raise
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its data for a later ``start()``.

        ``fast`` disconnects clients and shuts down cleanly; ``immediate``
        is a crash (recovery runs on the next start); ``smart`` waits for
        clients to disconnect.
        """
        runtime = self._runtime
        if runtime is None or runtime.process is None:
            return
        _terminate(runtime.process, mode, self._stop_timeout)
        runtime.process = None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        runtime, finalizer = self._runtime, self._finalizer
        if runtime is None or finalizer is None:
            return
        finalizer.detach()
        self._runtime = self._finalizer = None
        self._port = None
        if runtime.process is not None:
            _terminate(runtime.process, "fast", self._stop_timeout)
            runtime.process = None
        shutil.rmtree(runtime.base_dir)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "not started"
        state = "running" if self.running else "stopped"
        return f"<ThrowawayPostgres {where} {state} bindir={self.bindir}>"

    # -- internals --------------------------------------------------------

    def _require_runtime(self) -> _Runtime:
        if self._runtime is None:
            raise TargetError("ThrowawayPostgres has not been started")
        return self._runtime

    def _create_cluster(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="replicator-pg-", dir=self._parent_dir)).resolve()
        runtime = _Runtime(base_dir=base)
        self._runtime = runtime
        self._finalizer = weakref.finalize(self, _teardown, runtime)
        try:
            self._prepare_directories(base)
            self.server_bindir = self._reachable_bindir(base)
            self._run(
                [
                    str(self.server_bindir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                    "--no-instructions",
                ],
                what="initdb",
            )
        except BaseException:
            self.close()
            raise

    def _prepare_directories(self, base: Path) -> None:
        socket_file = base / "socket" / ".s.PGSQL.65535"
        if len(os.fsencode(socket_file)) > _MAX_SOCKET_PATH:
            raise TargetError(
                f"Temporary directory {base} is too deep for a unix socket path; "
                "set TMPDIR (or base_dir) to a shorter directory"
            )
        # base stays ours (log file, staged binaries); the server account owns
        # only what the server writes, so it cannot tamper with the rest.
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
        if self._account is None:
            return
        base.chmod(0o711)
        for directory in (self.data_dir, self.socket_dir):
            os.chown(directory, self._account.uid, self._account.gid)
        if not self._account.can_search(base):
            raise TargetError(
                f"User {self._account.name!r}, which runs PostgreSQL because we are root, "
                f"cannot reach {base}; set TMPDIR (or base_dir) to a directory it can traverse"
            )

    def _reachable_bindir(self, base: Path) -> Path:
        """The binaries as the server account can run them, staged if need be."""
        if self._account is None or self._binaries_run(self.bindir):
            return self.bindir
        pginstall = self.bindir.parent
        if pginstall.name != "pginstall":
            raise TargetError(
                f"User {self._account.name!r} cannot run the PostgreSQL binaries in "
                f"{self.bindir}; make them readable and traversable by it"
            )
        staged = stage_embedded_binaries(pginstall, base / "pgbin")
        if not self._binaries_run(staged):
            raise TargetError(
                f"User {self._account.name!r} cannot run the PostgreSQL binaries "
                f"even after copying them to {staged}"
            )
        return staged

    def _binaries_run(self, bindir: Path) -> bool:
        for name in SERVER_BINARIES:
            try:
                self._run([str(bindir / name), "--version"], what=f"{name} --version")
            except TargetError:
                return False
        return True

    def _run(self, argv: list[str], *, what: str) -> None:
        account = self._account
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env=_server_environment(),
                timeout=120,
                check=False,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TargetError(f"{what} could not run: {exc}") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise TargetError(f"{what} failed (exit code {result.returncode}):\n{output}")

    def _server_argv(self, port: int) -> list[str]:
        settings = {
            **self._settings,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
        }
        argv = [str(self.server_bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _launch(self, port: int) -> None:
        runtime = self._require_runtime()
        account = self._account
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    self._server_argv(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_server_environment(),
                    # Own session: a Ctrl-C meant for pytest must not reach the
                    # server before our teardown does.
                    start_new_session=True,
                    user=account.uid if account else None,
                    group=account.gid if account else None,
                    extra_groups=[] if account else None,
                )
            except OSError as exc:
                raise TargetError(f"Could not start postgres: {exc}") from exc
        runtime.process = process
        try:
            self._wait_until_ready(process, port)
        except BaseException as exc:
            _terminate(process, "immediate", self._stop_timeout)
            runtime.process = None
            if isinstance(exc, TargetError) and _port_was_taken(self.log_path, log_start):
                raise _PortInUseError(str(exc)) from exc
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self._start_timeout
        dsn = f"postgresql://{SUPERUSER}@{HOST}:{port}/postgres"
        last_error = "server not ready"
        while True:
            code = process.poll()
            if code is not None:
                raise TargetError(
                    f"PostgreSQL exited with code {code} while starting; "
                    f"server log tail:\n{self.log_tail()}"
                )
            if _postmaster_ready(self.data_dir):
                # The pid file says so; a real query proves it, over TCP.
                try:
                    with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                        conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    last_error = str(exc).strip()
                else:
                    return
            if time.monotonic() > deadline:
                raise TargetError(
                    f"PostgreSQL did not accept connections within {self._start_timeout:g}s "
                    f"({last_error}); server log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)


class _PortInUseError(TargetError):
    """The chosen port was taken between probing it and the server binding it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_was_taken(log_path: Path, offset: int) -> bool:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            return b"Address already in use" in log.read()
    except OSError:
        return False


def _postmaster_ready(data_dir: Path) -> bool:
    # Line 8 of postmaster.pid is the postmaster's status; "ready" once it
    # accepts connections (PostgreSQL 10 and later).
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"


def _server_environment() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) change what initdb and postgres do;
    # the C locale keeps their messages stable for the error text we show.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env
