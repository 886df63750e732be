"""The references in docs/ are generated from the code and must not drift."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import click

from replicator.cli import docs, main
from replicator.config import SECTIONS, ColumnConfig, TableConfig

ROOT = Path(__file__).resolve().parents[2]


def test_generated_references_are_up_to_date() -> None:
    for path, text in docs.generate().items():
        assert path.exists(), f"{path} is missing: run python -m replicator.cli.docs"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run python -m replicator.cli.docs"
        )


def _commands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        out.append((f"{ctx.command_path} {name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, click.Context(cmd, info_name=name, parent=ctx))
    return out


def test_every_command_has_help_and_is_documented() -> None:
    cli_doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    ctx = click.Context(main, info_name="replicator")
    commands = _commands(main, ctx)
    assert len(commands) >= 8
    for path, cmd in commands:
        assert cmd.help and cmd.help.strip(), f"`{path}` has no help text"
        assert f"## `{path}`" in cli_doc, f"`{path}` is not in docs/cli.md"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"option {param.opts} of `{path}` has no help text"


def test_every_setting_is_in_the_example_config() -> None:
    text = (ROOT / "config" / "replicator.example.toml").read_text(encoding="utf-8")
    parsed = tomllib.loads(text)
    for section, cls in SECTIONS.items():
        assert section in parsed, f"[{section}] is missing from the example config"
        for field in dataclasses.fields(cls):
            # Set, or shown commented out with its explanation right above.
            pattern = rf"^#? ?{re.escape(field.name)} = "
            assert re.search(pattern, text, re.MULTILINE), (
                f"{section}.{field.name} is not in config/replicator.example.toml"
            )
    for cls in (TableConfig, ColumnConfig):
        for field in dataclasses.fields(cls):
            if field.name == "columns":
                continue
            assert re.search(rf"^# {re.escape(field.name)} = ", text, re.MULTILINE), (
                f"table setting {field.name} is not in config/replicator.example.toml"
            )


def test_example_configs_load() -> None:
    from replicator.config import load_config

    for name in ("replicator.example.toml", "reference-app.toml"):
        config = load_config(ROOT / "config" / name, env={})
        assert config.target.state_schema == "replicator"


def test_the_port_table_in_the_query_docs_is_the_checkers_caveats() -> None:
    from replicator.queries.port import CAVEATS, port_table_markdown

    text = (ROOT / "docs" / "queries.md").read_text(encoding="utf-8")
    start = text.index(docs.PORT_TABLE_START) + len(docs.PORT_TABLE_START)
    end = text.index(docs.PORT_TABLE_END)
    assert text[start:end].strip() == port_table_markdown(), (
        "docs/queries.md's port table is out of date: run python -m replicator.cli.docs"
    )
    for caveat in CAVEATS:
        assert f"| {caveat.difference} |" in text[start:end]
