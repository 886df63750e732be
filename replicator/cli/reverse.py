"""``replicator reverse`` (PostgreSQL back into SQLite after cutover) and ``replicator rollback``.

The work is :mod:`replicator.reverse` and :mod:`replicator.proof.rollback`;
these commands print its answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from replicator.cli import EXIT_FAILURE, EXIT_OK, gate_exit, main, run_guarded


@main.group()
def reverse() -> None:
    """After cutover: stream PostgreSQL's changes back into the SQLite file."""


@reverse.command("init")
@click.pass_context
def reverse_init(ctx: click.Context) -> None:
    """Install the capture triggers on every replicated PostgreSQL table.

    Needs ownership of the tables (or their TRIGGER privilege), not superuser.
    Safe to run again: it recreates the triggers in one transaction.
    """

    def go() -> int:
        from replicator.reverse.setup import reverse_init as init

        init(ctx.obj.config(), out=click.echo)
        return EXIT_OK

    run_guarded(ctx, go)


@reverse.command("run")
@click.option("--batch-size", type=int, default=500, help="Most changes applied per batch.")
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    help="Seconds between looks at the change table when no notification arrives.",
)
@click.option("--once", is_flag=True, help="Apply what is captured now, then exit.")
@click.option(
    "--metrics-address",
    default="",
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz and /readyz here (default: off; the forward daemon "
    "may hold metrics.address).",
)
@click.pass_context
def reverse_run(
    ctx: click.Context, batch_size: int, poll_interval: float, once: bool, metrics_address: str
) -> None:
    """Apply PostgreSQL's changes to SQLite until stopped (SIGTERM finishes the batch).

    Each batch commits in SQLite together with its position, so a restart
    after any failure applies every change exactly once.
    """

    def go() -> int:
        from replicator.reverse.daemon import run_reverse

        if batch_size < 1:
            raise click.UsageError("--batch-size must be at least 1")
        return run_reverse(
            ctx.obj.config(),
            batch_size=batch_size,
            poll_interval=poll_interval,
            once=once,
            metrics_address=metrics_address,
        )

    run_guarded(ctx, go)


@reverse.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def reverse_status(ctx: click.Context, as_json: bool) -> None:
    """Changes waiting, the reverse daemon, dead letters; exit 0 only when in sync."""

    def go() -> int:
        from replicator.reverse.setup import read_reverse_status

        status = read_reverse_status(ctx.obj.config(), check_capture=True)
        if as_json:
            click.echo(
                json.dumps(
                    {**asdict(status), "in_sync": status.in_sync, "verdict": status.verdict},
                    default=str,
                    indent=2,
                )
            )
        else:
            click.echo(status.render())
        return EXIT_OK if status.in_sync else EXIT_FAILURE

    run_guarded(ctx, go)


@reverse.command("uninstall")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def reverse_uninstall(ctx: click.Context, yes: bool) -> None:
    """Remove the capture triggers, the change table's rows and SQLite's reverse position."""

    def go() -> int:
        from replicator.reverse.setup import reverse_uninstall as uninstall

        if not yes:
            click.confirm("Remove the reverse capture triggers from PostgreSQL?", abort=True)
        uninstall(ctx.obj.config(), out=click.echo)
        return EXIT_OK

    run_guarded(ctx, go)


@main.command()
@click.option("--dry-run", is_flag=True, help="Run the checks; write and record nothing.")
@click.option("--timeout", type=float, default=300.0, help="Most seconds to wait for the lag.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def rollback(ctx: click.Context, dry_run: bool, timeout: float, as_json: bool) -> None:
    """Go / no-go for pointing the app back at SQLite: the mirror of cutover.

    Checks the reverse lag reaches zero, verifies every table row by row,
    that no reverse dead letter is open and that PostgreSQL was not written
    while the checks ran; on go moves SQLite's AUTOINCREMENT
    marks past PostgreSQL's sequences and records the rollback in the state
    schema. Exit 0 on go, 1 on no-go.
    """

    def go() -> int:
        from replicator.proof.rollback import Rollback

        report = Rollback(
            ctx.obj.config(),
            dry_run=dry_run,
            timeout=timeout,
            out=(lambda _line: None) if as_json else click.echo,
        ).run()
        return gate_exit(report, as_json=as_json, dry_run=dry_run)

    run_guarded(ctx, go)
