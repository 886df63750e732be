"""The ``replicator`` command.

Built on click: nested commands, ``--help`` on every level with each option's
environment variable shown, and shell completion, with no code generation.
Every failure a user can cause ends in one sentence on stderr and a
documented exit code (see ``docs/cli.md``), never a traceback.

Each command is its flags and one call into the library, whose answer it
prints: the commands are in :mod:`replicator.cli.commands` and, for the
``dead-letters`` group, :mod:`replicator.cli.letters`.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from replicator import __version__
from replicator.config import Config, load_config
from replicator.errors import ReplicatorError
from replicator.logs import configure, scrub

if TYPE_CHECKING:
    from replicator.proof.cutover import GateReport

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
    except click.exceptions.Abort:
        # "no" (or end of input) at a confirmation prompt: nothing was changed.
        click.echo("cancelled", err=True)
        sys.exit(EXIT_FAILURE)
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


def gate_exit(report: GateReport, *, as_json: bool, dry_run: bool) -> int:
    """The end of a go / no-go command (cutover, rollback): the report as JSON, or the
    verdict line after the checks printed as they ran; exit 0 on go, 1 on no-go."""
    if as_json:
        click.echo(json.dumps(report.to_json(), default=str, indent=2))
    else:
        click.echo(f"verdict: {'GO' if report.go else 'NO-GO'}" + (" (dry run)" if dry_run else ""))
    return EXIT_OK if report.go else EXIT_FAILURE


# The command modules add their commands to ``main`` as they load, using the
# names above: so they load last, and whoever imports ``main`` gets every command.
from replicator.cli import commands, letters, reverse  # noqa: E402, F401
