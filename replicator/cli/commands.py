"""The commands that set up, replicate, prove and check: flags, one library call, output.

The ``dead-letters`` group is in :mod:`replicator.cli.letters`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from replicator.cli import EXIT_FAILURE, EXIT_OK, gate_exit, main, run_guarded


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
        from replicator.proof.setup import initialise

        initialise(ctx.obj.config(), triggers=not no_triggers, out=click.echo)
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
@click.option(
    "--consumer",
    metavar="ID",
    default=None,
    help="Only forget this other target (its id, as `status` shows it): one gone for good, "
    "whose position holds the change log back.",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove the triggers and change log even while other targets are registered "
    "(they stop being fed).",
)
@click.pass_context
def uninstall(ctx: click.Context, yes: bool, consumer: str | None, everything: bool) -> None:
    """Remove the change-capture triggers and change log from the source.

    The application's own tables and data are not touched. The state schema
    in PostgreSQL is left in place (drop it yourself once cut over). When other
    targets are fed from the same source, only this target's registration is
    removed (the triggers and log stay for them) unless --all is given.
    """

    def go() -> int:
        from replicator.proof.setup import describe_removal, remove_capture

        config = ctx.obj.config()
        path = config.require_source()
        if not yes:
            what = f"consumer {consumer}" if consumer else "replicator triggers and change log"
            click.confirm(f"Remove {what} from {path}?", abort=True)
        removal = remove_capture(config, consumer=consumer, everything=everything)
        click.echo(describe_removal(removal, str(path)))
        return EXIT_OK

    run_guarded(ctx, go)


@main.command()
@click.option("--repair", is_flag=True, help="Re-copy differing rows and fix sequences.")
@click.option("--table", "tables", multiple=True, metavar="NAME", help="Only this table.")
@click.option("--chunk-rows", type=int, default=5000, help="Rows per checksum chunk.")
@click.option(
    "--changed",
    is_flag=True,
    help="Only the rows the change log names since each table's last verify "
    "(a full verify where that cannot be done; the output says which).",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Read and compare every row in Python instead of comparing chunk digests.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context,
    repair: bool,
    tables: tuple[str, ...],
    chunk_rows: int,
    changed: bool,
    exact: bool,
    as_json: bool,
) -> None:
    """Prove the target equals the source, row by row.

    Row counts and chunk digests of normalised values per table (each database
    computes its own; a chunk whose digests differ is compared row by row), then
    orphaned foreign keys, double-encoded JSON and sequences behind their largest
    id. Safe against a live source. Exit 0 when identical, 1 on any difference
    (open dead letters included). Each run records how far it verified, so that
    `--changed` (minutes before a cutover) compares only what changed since.
    """

    def go() -> int:
        from replicator.proof.verify import Verifier

        config = ctx.obj.config()
        report = Verifier(config, chunk_rows=chunk_rows, digests=not exact).run(
            repair=repair, only=list(tables) or None, changed=changed
        )
        if as_json:
            click.echo(json.dumps(report.to_json(), default=str, indent=2))
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
@click.option(
    "--server",
    metavar="URL",
    envvar="REPLICATOR_DEMO_SERVER",
    show_envvar=True,
    default=None,
    help="Run on this PostgreSQL server, in a database of the demo's own (needs CREATEDB; "
    "dropped afterwards). Default: a throwaway local server.",
)
@click.option(
    "--round-trip",
    is_flag=True,
    help="Then edit rows in PostgreSQL and stream them back into SQLite (replicator reverse).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    artifacts: int,
    seconds: float,
    rate: float,
    workdir: Path | None,
    server: str | None,
    round_trip: bool,
) -> None:
    """Replicate a sample reference-app database end to end, live.

    Builds a sample SQLite database, creates the app's PostgreSQL schema,
    replicates it while a background writer behaves like the app, shows live
    status, then verifies. Runs on a throwaway local PostgreSQL unless --server
    names one; DATABASE_URL (the real target) is never used.
    """

    def go() -> int:
        from replicator.demo.run import run_demo

        return run_demo(
            server,
            artifacts=artifacts,
            seconds=seconds,
            rate=rate,
            workdir=workdir,
            round_trip=round_trip,
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
                json.dumps(result.to_json(), default=str, indent=2) if as_json else render(result)
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
        return gate_exit(report, as_json=as_json, dry_run=dry_run)

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
@click.option(
    "--rounds",
    type=int,
    default=None,
    help="Split the timed runs into this many rounds for the p95 spread (default: file, 5).",
)
@click.option(
    "--clients",
    type=int,
    default=None,
    help="Also run each query from this many concurrent clients per side "
    "(default: the file's clients, else no load run).",
)
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
    rounds: int | None,
    clients: int | None,
    no_latency: bool,
) -> None:
    """Run each query in FILE on SQLite and PostgreSQL; compare answers and latency.

    FILE is TOML or SQL with `-- name:` markers (see docs/queries.md). Both
    sides are read-only. Each query gets a verdict: same, different, type
    drift, order not guaranteed, vacuous, slow (or near the target: the
    rounds straddle it) or error; p95 is judged per parameter set. Plan advice
    and, for queries without a PostgreSQL form, a suggested port are printed,
    never applied. Exit 0 when every query is "same" (or its finding is
    accepted in FILE), 1 otherwise, 2 for a mistake in FILE.
    """

    def go() -> int:
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
            rounds=rounds,
            clients=clients,
        )
        if as_json:
            click.echo(json.dumps(report.to_json(), default=str, indent=2))
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
    problem with what to do about it. Then the schema report: each table,
    column, key, index, constraint, default and trigger of the source, and
    what it becomes in PostgreSQL (created, translated, kept or skipped with
    the reason; under "schema" with --json). Exit 0 when nothing blocks, 1
    otherwise.
    """

    def go() -> int:
        from replicator.proof.check import run_checks

        report = run_checks(ctx.obj.config(), integrity=not no_integrity)
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2))
        else:
            click.echo(report.render())
        return EXIT_OK if report.ok else EXIT_FAILURE

    run_guarded(ctx, go)
