"""``replicator dead-letters``: list, show, retry or discard rows that could not be written.

The work is :mod:`replicator.proof.letters`; these commands print its answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from replicator.cli import EXIT_FAILURE, EXIT_OK, main, run_guarded


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
        from replicator.proof.letters import list_letters

        letters = list_letters(
            ctx.obj.config(), table=table, include_resolved=include_resolved, limit=limit
        )
        if as_json:
            click.echo(json.dumps([asdict(x) for x in letters], default=str, indent=2))
            return EXIT_OK
        if not letters:
            click.echo("no dead letters")
            return EXIT_OK
        for x in letters:
            state = f" [{x.resolution}]" if x.resolved_at else ""
            key = json.dumps(x.key, ensure_ascii=False)
            column = f" {x.column}" if x.column else ""
            way = " (reverse)" if x.direction == "reverse" else ""
            click.echo(f"{x.id:>6} {x.table}{way} {key}{column}: {x.error[:120]}{state}")
        return EXIT_OK

    run_guarded(ctx, go)


@dead_letters.command("show")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def dead_letters_show(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Show dead letters in full: raw value, row image, error, position."""

    def go() -> int:
        from replicator.proof.letters import show_letters

        shown = show_letters(ctx.obj.config(), ids)
        for x in shown.letters:
            click.echo(json.dumps(asdict(x), default=str, indent=2, ensure_ascii=False))
        if shown.missing:
            click.echo(f"no dead letter with id {', '.join(map(str, shown.missing))}", err=True)
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
        from replicator.proof.letters import Retried, retry_letters

        def say(r: Retried) -> None:
            if r.key is None:
                click.echo(f"{r.table}: not a replicated table any more; left open", err=True)
            elif r.action == "failed":
                click.echo(f"{r.table} {list(r.key)}: still fails: {r.error}")
            else:
                click.echo(f"{r.table} {list(r.key)}: {r.action}")

        totals = retry_letters(ctx.obj.config(), ids=ids, table=table, report=say)
        click.echo(f"{totals.resolved} resolved, {totals.still_open} still open")
        return EXIT_FAILURE if totals.still_open else EXIT_OK

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
    """Accept that these rows will not be written (kept, marked 'discarded').

    Into PostgreSQL; for a letter of the reverse direction, into SQLite.
    """
    _letters_selection(ids, table, every)

    def go() -> int:
        from replicator.proof.letters import discard_letters

        def ask(count: int) -> bool:
            return click.confirm(f"Discard {count} dead letter(s)?", abort=True)

        n = discard_letters(ctx.obj.config(), ids=ids, table=table, confirm=None if yes else ask)
        click.echo(f"{n} dead letter(s) discarded")
        return EXIT_OK

    run_guarded(ctx, go)
