"""The ``replicator`` command.

Built on click: nested commands, ``--help`` on every level with each option's
environment variable shown, and shell completion, with no code generation.
Every failure a user can cause ends in one sentence on stderr and a
documented exit code (see ``docs/cli.md``), never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from replicator import __version__
from replicator.config import Config, load_config
from replicator.errors import ReplicatorError
from replicator.logs import configure, scrub

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


@dataclass
class Context:
    config_path: Path | None
    overrides: dict[str, Any]
    debug: bool
    _config: Config | None = None

    def config(self, **extra: Any) -> Config:
        if self._config is None or extra:
            merged = {**self.overrides, **extra}
            self._config = load_config(self.config_path, overrides=merged)
            configure(self._config.log.level, self._config.log.format)
        return self._config


def run_guarded(ctx: click.Context, fn: Callable[[], int | None]) -> None:
    obj: Context = ctx.obj
    try:
        code = fn()
    except ReplicatorError as exc:
        click.echo(f"replicator: error: {scrub(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("replicator: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug of ours: say so in one line, details on request
        if obj.debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(
            f"replicator: internal error: {type(exc).__name__}: {scrub(first)} "
            "(run with --debug for the traceback)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or EXIT_OK)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="replicator")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="REPLICATOR_CONFIG",
    show_envvar=True,
    help="TOML configuration file (see config/replicator.example.toml).",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    help="Source SQLite file; overrides DATABASE_PATH and [source] path.",
)
@click.option(
    "--target",
    metavar="URL",
    help="Target PostgreSQL URL; overrides DATABASE_URL and [target] url.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Lowest log level written (default: info).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default=None,
    help="Log format (default: auto: console on a terminal, JSON lines otherwise).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: Path | None,
    source: Path | None,
    target: str | None,
    log_level: str | None,
    log_format: str | None,
    debug: bool,
) -> None:
    """Replicate a live SQLite database into PostgreSQL, then cut over.

    Source and target come from DATABASE_PATH and DATABASE_URL (the names the
    application already uses), a config file, or --source/--target.
    """
    ctx.obj = Context(
        config_path=config_path,
        overrides={
            "source.path": str(source) if source else None,
            "target.url": target,
            "log.level": log_level,
            "log.format": log_format,
        },
        debug=debug,
    )


@main.command()
@click.option(
    "--no-triggers", is_flag=True, help="Only migrate the state schema; leave the source alone."
)
@click.pass_context
def init(ctx: click.Context, no_triggers: bool) -> None:
    """Create or upgrade the state schema, and install change capture in the source.

    Safe to run again: it applies only missing migrations and recreates the
    triggers (atomically, so no change slips through) for the selected tables.
    """

    def go() -> int:
        from replicator.state.migrations import migrate
        from replicator.target.connection import connect

        config = ctx.obj.config()
        dsn = config.require_target()
        connect(dsn, connect_timeout=config.target.connect_timeout).close()
        before, after = migrate(dsn, config.target.state_schema)
        schema = config.target.state_schema
        if before == after:
            click.echo(f"state schema {schema!r} is up to date (revision {after})")
        else:
            click.echo(f"state schema {schema!r} migrated from {before or 'nothing'} to {after}")
        if config.source.path is not None and not no_triggers:
            from replicator.plan.tables import select_tables
            from replicator.source import changelog
            from replicator.source.cursor import suggest
            from replicator.source.sqlite import describe_table, list_tables, open_source
            from replicator.stream.cursor import capture_specs, source_writable

            writable = source_writable(config)
            source = open_source(
                config.source.path,
                readonly=not writable,
                busy_timeout_ms=config.source.busy_timeout_ms,
            )
            try:
                names = select_tables(
                    list_tables(source), config.tables.include, config.tables.exclude
                )
                tables = [describe_table(source, n) for n in names]
                click.echo("capture per table (suggested; set [table.NAME] capture/cursor):")
                for table in tables:
                    click.echo("  " + suggest(table, writable=writable).render())
                specs = capture_specs(config, source, writable=writable)
                by_trigger = [t for t in tables if specs.get(t.name) is None]
                if by_trigger:
                    changelog.install(source, by_trigger)
            finally:
                source.close()
            if by_trigger:
                click.echo(
                    f"change capture installed on {len(by_trigger)} table(s) "
                    f"in {config.source.path}"
                )
            cursor_tables = [f"{n} ({s.column})" for n, s in specs.items() if s is not None]
            if cursor_tables:
                click.echo(f"followed by a cursor, nothing installed: {', '.join(cursor_tables)}")
        return EXIT_OK

    run_guarded(ctx, go)


@main.command()
@click.option(
    "--restart",
    is_flag=True,
    help="Forget earlier progress and copy every table again (upserting over rows already "
    "there; rows no longer in the source are left: `verify --repair` removes them).",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME",
    help="Copy only this source table (repeatable).",
)
@click.option(
    "--chunk-rows", type=int, default=None, help="Rows per chunk (default: snapshot.chunk_rows)."
)
@click.option(
    "--on-error",
    type=click.Choice(["deadletter", "stop"]),
    default=None,
    help="What a row that cannot be written does (default: snapshot.on_error).",
)
@click.pass_context
def snapshot(
    ctx: click.Context,
    restart: bool,
    tables: tuple[str, ...],
    chunk_rows: int | None,
    on_error: str | None,
) -> None:
    """Copy every table from SQLite into PostgreSQL, resumably.

    Killed at any point and run again, it continues after the last committed
    chunk. Ends with a summary per table; exit 0 when every row was read, even
    when some went to the dead-letter table (they are listed there).
    """

    def go() -> int:
        from replicator.snapshot import Snapshotter

        config = ctx.obj.config(
            **{"snapshot.chunk_rows": chunk_rows, "snapshot.on_error": on_error}
        )
        summary = Snapshotter(config).run(restart=restart, only=list(tables) or None)
        click.echo(summary.render())
        return EXIT_OK

    run_guarded(ctx, go)


@main.command()
@click.option(
    "--standby",
    is_flag=True,
    help="If another replicator holds the lock, wait and take over when it stops.",
)
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    default=None,
    help="Serve /metrics, /healthz and /readyz here (default: metrics.address, 127.0.0.1:9479).",
)
@click.option(
    "--capture",
    type=click.Choice(["triggers", "cursor"]),
    default=None,
    help="Capture every table this way, whatever the config says (default: per table, "
    "else capture.mode).",
)
@click.pass_context
def run(
    ctx: click.Context, standby: bool, metrics_address: str | None, capture: str | None
) -> None:
    """Snapshot (if needed), then stream every change until stopped.

    On a fresh target: init, record the change-log position, snapshot, then
    stream from that position. On restart it resumes where it stopped.
    SIGTERM/SIGINT finish the batch in hand and exit 0; a second signal exits
    at once (still safe).
    """

    def go() -> int:
        from replicator.stream.daemon import Daemon

        config = ctx.obj.config(**{"metrics.address": metrics_address})
        if capture is not None:
            from replicator.stream.cursor import with_capture

            config = with_capture(config, "cursor" if capture == "cursor" else "triggers")
        return Daemon(config, standby=standby).run()

    run_guarded(ctx, go)


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def uninstall(ctx: click.Context, yes: bool) -> None:
    """Remove the change-capture triggers and change log from the source.

    The application's own tables and data are not touched. The state schema
    in PostgreSQL is left in place (drop it yourself once cut over).
    """

    def go() -> int:
        from replicator.source import changelog
        from replicator.source.sqlite import open_source

        config = ctx.obj.config()
        path = config.require_source()
        if not yes:
            click.confirm(f"Remove replicator triggers and change log from {path}?", abort=True)
        source = open_source(path, busy_timeout_ms=config.source.busy_timeout_ms)
        try:
            triggers, had_log = changelog.uninstall(source)
        finally:
            source.close()
        log_note = "and the change log" if had_log else "(no change log was present)"
        click.echo(f"removed {triggers} trigger(s) {log_note} from {path}")
        return EXIT_OK

    run_guarded(ctx, go)


@main.command()
@click.option("--repair", is_flag=True, help="Re-copy differing rows and fix sequences.")
@click.option("--table", "tables", multiple=True, metavar="NAME", help="Only this table.")
@click.option("--chunk-rows", type=int, default=5000, help="Rows per checksum chunk.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context, repair: bool, tables: tuple[str, ...], chunk_rows: int, as_json: bool
) -> None:
    """Prove the target equals the source, row by row.

    Row counts and chunked checksums of normalised values per table, then
    orphaned foreign keys, double-encoded JSON and sequences behind their
    largest id. Safe against a live source. Exit 0 when identical, 1 on any
    difference (open dead letters included).
    """

    def go() -> int:
        import json as jsonlib

        from replicator.proof.verify import Verifier

        config = ctx.obj.config()
        report = Verifier(config, chunk_rows=chunk_rows).run(
            repair=repair, only=list(tables) or None
        )
        if as_json:
            click.echo(jsonlib.dumps(report.to_json(), default=str, indent=2))
        else:
            click.echo(report.render())
        return EXIT_OK if report.ok else EXIT_FAILURE

    run_guarded(ctx, go)


@main.command()
@click.option("--artifacts", type=int, default=20_000, help="Size of the sample database.")
@click.option("--seconds", type=float, default=15.0, help="How long the sample app writes.")
@click.option("--rate", type=float, default=300.0, help="App transactions per second.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the sample SQLite database here (default: a temporary folder, removed).",
)
@click.pass_context
def demo(
    ctx: click.Context, artifacts: int, seconds: float, rate: float, workdir: Path | None
) -> None:
    """Replicate a sample reference-app database end to end, live.

    Builds a sample SQLite database, creates the app's PostgreSQL schema,
    replicates it while a background writer behaves like the app, shows live
    status, then verifies. Uses DATABASE_URL's server when set (in a database
    of its own, dropped afterwards), else a throwaway local PostgreSQL.
    """

    def go() -> int:
        from replicator.demo.run import run_demo

        server = os.environ.get("DATABASE_URL") or ctx.obj.overrides.get("target.url")
        return run_demo(
            server,
            artifacts=artifacts,
            seconds=seconds,
            rate=rate,
            workdir=workdir,
            out=sys.stdout,
        )

    run_guarded(ctx, go)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh in place every --interval seconds.")
@click.option("--interval", type=float, default=2.0, help="Seconds between --watch refreshes.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool, interval: float) -> None:
    """How far behind PostgreSQL is, per table, and a one-line verdict.

    Works whether or not the daemon runs: it reads the state schema and the
    SQLite file. Exit codes: 0 in sync, 1 behind / stalled / not started,
    2 the state cannot be read.
    """

    def go() -> int:
        import json as jsonlib
        import time

        from replicator.proof.status import read_status, render

        config = ctx.obj.config()
        if watch:
            import signal

            # Ctrl-C ends --watch even when started with SIGINT ignored (as from a
            # shell's background job), which Python would otherwise leave ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        while True:
            result = read_status(config)
            text = (
                jsonlib.dumps(result.to_json(), default=str, indent=2)
                if as_json
                else render(result)
            )
            if watch:
                click.echo("\x1b[2J\x1b[H" + text)  # clear screen, cursor home
                time.sleep(interval)
                continue
            click.echo(text)
            return result.exit_code

    run_guarded(ctx, go)


@main.command()
@click.option("--dry-run", is_flag=True, help="Run the checks; move no sequence, record nothing.")
@click.option(
    "--quiet-seconds",
    type=float,
    default=0.0,
    help="First wait until no change was captured for this long (the app stopped writing).",
)
@click.option("--timeout", type=float, default=300.0, help="Most seconds to wait for each step.")
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Also run `replicator queries check` on this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def cutover(
    ctx: click.Context,
    dry_run: bool,
    quiet_seconds: float,
    timeout: float,
    queries_file: Path | None,
    as_json: bool,
) -> None:
    """Go / no-go: daemon running, tail applied, verify clean, sequences reset.

    Checks the daemon runs and the lag reaches zero (optionally after the
    source has been quiet), verifies every table, resets every sequence past
    its largest id and records the cutover in the state schema. Exit 0 on go,
    1 on no-go.
    """

    def go() -> int:
        import json as jsonlib

        from replicator.proof.cutover import Cutover

        config = ctx.obj.config()
        report = Cutover(
            config,
            dry_run=dry_run,
            quiet_seconds=quiet_seconds,
            timeout=timeout,
            queries=queries_file,
            out=(lambda _line: None) if as_json else click.echo,
        ).run()
        if as_json:
            click.echo(jsonlib.dumps(report.to_json(), default=str, indent=2))
        else:
            click.echo(
                f"verdict: {'GO' if report.go else 'NO-GO'}" + (" (dry run)" if dry_run else "")
            )
        return EXIT_OK if report.go else EXIT_FAILURE

    run_guarded(ctx, go)


@main.group("dead-letters")
def dead_letters() -> None:
    """Rows that could not be written: list, show, retry after a fix, or discard."""


def _letters_selection(ids: tuple[int, ...], table: str | None, every: bool) -> None:
    if not ids and not table and not every:
        raise click.UsageError("name dead letters by ID, or use --table NAME or --all")


@dead_letters.command("list")
@click.option("--table", default=None, metavar="NAME", help="Only this source table.")
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved ones.")
@click.option("--limit", type=int, default=100, help="Most rows shown.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def dead_letters_list(
    ctx: click.Context, table: str | None, include_resolved: bool, limit: int, as_json: bool
) -> None:
    """List open dead letters: table, key, column and reason."""

    def go() -> int:
        import json as jsonlib
        from dataclasses import asdict

        from replicator.state import deadletter
        from replicator.target.connection import connect

        config = ctx.obj.config()
        with connect(config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            letters = deadletter.fetch(
                cur,
                config.target.state_schema,
                table=table,
                include_resolved=include_resolved,
                limit=limit,
            )
        if as_json:
            click.echo(jsonlib.dumps([asdict(x) for x in letters], default=str, indent=2))
            return EXIT_OK
        if not letters:
            click.echo("no dead letters")
            return EXIT_OK
        for x in letters:
            state = f" [{x.resolution}]" if x.resolved_at else ""
            key = jsonlib.dumps(x.key, ensure_ascii=False)
            column = f" {x.column}" if x.column else ""
            click.echo(f"{x.id:>6} {x.table} {key}{column}: {x.error[:120]}{state}")
        return EXIT_OK

    run_guarded(ctx, go)


@dead_letters.command("show")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def dead_letters_show(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Show dead letters in full: raw value, row image, error, position."""

    def go() -> int:
        import json as jsonlib
        from dataclasses import asdict

        from replicator.state import deadletter
        from replicator.target.connection import connect

        config = ctx.obj.config()
        with connect(config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            letters = deadletter.fetch(cur, config.target.state_schema, ids=ids)
        missing = set(ids) - {x.id for x in letters}
        for x in letters:
            click.echo(jsonlib.dumps(asdict(x), default=str, indent=2, ensure_ascii=False))
        if missing:
            click.echo(f"no dead letter with id {', '.join(map(str, sorted(missing)))}", err=True)
            return EXIT_FAILURE
        return EXIT_OK

    run_guarded(ctx, go)


@dead_letters.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--table", default=None, metavar="NAME", help="Every open one of this table.")
@click.option("--all", "every", is_flag=True, help="Every open dead letter.")
@click.pass_context
def dead_letters_retry(
    ctx: click.Context, ids: tuple[int, ...], table: str | None, every: bool
) -> None:
    """Re-copy the rows from the source as they are now (after fixing the cause).

    A row that now writes is resolved as 'retried'; a row gone from the source
    is deleted from the target and resolved; one that still fails stays open
    with its new reason. Exit 1 when any still fails.
    """
    _letters_selection(ids, table, every)

    def go() -> int:
        from replicator.plan.tables import build_plans
        from replicator.proof.repair import rewrite_keys
        from replicator.source.sqlite import open_source
        from replicator.state import deadletter
        from replicator.target.connection import connect

        config = ctx.obj.config()
        schema = config.target.state_schema
        source = open_source(config.require_source(), readonly=True)
        conn = connect(config.require_target(), autocommit=True)
        try:
            with conn.cursor() as cur:
                letters = deadletter.fetch(cur, schema, ids=ids, table=table)
            letters = [x for x in letters if x.resolved_at is None]
            plans = {p.source.name: p for p in build_plans(source, conn, config)}
            failed = 0
            for name in sorted({x.table for x in letters}):
                group = [x for x in letters if x.table == name]
                if name not in plans:
                    click.echo(f"{name}: not a replicated table any more; left open", err=True)
                    failed += len(group)
                    continue
                by_key: dict[tuple[object, ...], list[int]] = {}
                for x in group:
                    by_key.setdefault(deadletter.decode_key(x.key), []).append(x.id)
                results = rewrite_keys(source, conn, plans[name], list(by_key))
                with conn.transaction(), conn.cursor() as cur:
                    for r in results:
                        letter_ids = by_key[r.key]
                        if r.action == "failed":
                            failed += len(letter_ids)
                            deadletter.update_error(
                                cur, schema, letter_ids, r.error or "", r.column
                            )
                            click.echo(f"{name} {list(r.key)}: still fails: {r.error}")
                        else:
                            deadletter.mark(cur, schema, letter_ids, f"retried ({r.action})")
                            click.echo(f"{name} {list(r.key)}: {r.action}")
            click.echo(f"{len(letters) - failed} resolved, {failed} still open")
            return EXIT_FAILURE if failed else EXIT_OK
        finally:
            conn.close()
            source.close()

    run_guarded(ctx, go)


@dead_letters.command("discard")
@click.argument("ids", nargs=-1, type=int)
@click.option("--table", default=None, metavar="NAME", help="Every open one of this table.")
@click.option("--all", "every", is_flag=True, help="Every open dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dead_letters_discard(
    ctx: click.Context, ids: tuple[int, ...], table: str | None, every: bool, yes: bool
) -> None:
    """Accept that these rows will not be in PostgreSQL (kept, marked 'discarded')."""
    _letters_selection(ids, table, every)

    def go() -> int:
        from replicator.state import deadletter
        from replicator.target.connection import connect

        config = ctx.obj.config()
        schema = config.target.state_schema
        with connect(config.require_target(), autocommit=True) as conn:
            with conn.cursor() as cur:
                letters = [
                    x
                    for x in deadletter.fetch(cur, schema, ids=ids, table=table)
                    if x.resolved_at is None
                ]
            if not yes:
                click.confirm(f"Discard {len(letters)} dead letter(s)?", abort=True)
            with conn.transaction(), conn.cursor() as cur:
                n = deadletter.mark(cur, schema, [x.id for x in letters], "discarded")
        click.echo(f"{n} dead letter(s) discarded")
        return EXIT_OK

    run_guarded(ctx, go)


@main.group()
def queries() -> None:
    """Check the application's queries answer the same, fast enough, on PostgreSQL."""


@queries.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--query", "only", multiple=True, metavar="NAME", help="Only this query (repeatable)."
)
@click.option(
    "--target-ms",
    type=float,
    default=None,
    help="p95 target for PostgreSQL in ms (default: the file's target_p95_ms, else 100).",
)
@click.option("--runs", type=int, default=None, help="Timed runs per side (default: file, 100).")
@click.option("--warmup", type=int, default=None, help="Untimed runs first (default: file, 3).")
@click.option("--no-latency", is_flag=True, help="Only compare results; time nothing.")
@click.pass_context
def queries_check(
    ctx: click.Context,
    file: Path,
    as_json: bool,
    only: tuple[str, ...],
    target_ms: float | None,
    runs: int | None,
    warmup: int | None,
    no_latency: bool,
) -> None:
    """Run each query in FILE on SQLite and PostgreSQL; compare answers and latency.

    FILE is TOML or SQL with `-- name:` markers (see docs/queries.md). Both
    sides are read-only. Exit 0 when every query returns the same answer and
    meets its p95 target, 1 otherwise.
    """

    def go() -> int:
        import json as jsonlib

        from replicator.queries.checker import check_queries

        config = ctx.obj.config()
        report = check_queries(
            config,
            file,
            runs=runs,
            warmup=warmup,
            target_p95_ms=target_ms,
            only=list(only) or None,
            measure=not no_latency,
        )
        if as_json:
            click.echo(jsonlib.dumps(report.to_json(), default=str, indent=2))
        else:
            click.echo(report.render())
        return EXIT_OK if report.ok else EXIT_FAILURE

    run_guarded(ctx, go)


@main.command()
@click.option(
    "--no-integrity", is_flag=True, help="Skip PRAGMA quick_check (slow on very large files)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def check(ctx: click.Context, no_integrity: bool, as_json: bool) -> None:
    """Run every preflight check at once; writes nothing.

    Source readable, intact and in WAL mode; target reachable, primary and
    writable with the privileges needed; every table and column mappable with
    no name collisions; the state schema at the right version. Lists every
    problem with what to do about it. Exit 0 when nothing blocks, 1 otherwise.
    """

    def go() -> int:
        import json as jsonlib

        from replicator.proof.check import run_checks

        report = run_checks(ctx.obj.config(), integrity=not no_integrity)
        if as_json:
            click.echo(jsonlib.dumps(report.to_json(), indent=2))
        else:
            click.echo(report.render())
        return EXIT_OK if report.ok else EXIT_FAILURE

    run_guarded(ctx, go)


def entrypoint() -> None:  # pragma: no cover - thin wrapper for python -m
    main(prog_name=os.path.basename(sys.argv[0]) or "replicator")


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
