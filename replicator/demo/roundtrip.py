"""``replicator demo --round-trip``: after the forward demo, the way back.

The app (a session of its own, as after a cutover) edits a row and deletes
another in PostgreSQL; the reverse stream applies both to the SQLite file, and
the edited row is printed as SQLite holds it before and after: the timestamp in
the column's own text style, the JSON as jsonb's text.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import psycopg

from replicator.config import Config, MetricsConfig
from replicator.reverse.daemon import ReverseDaemon
from replicator.reverse.setup import read_reverse_status, reverse_init


def _sqlite_row(db: Path, artifact: int) -> tuple[object, ...] | None:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT title, updated_at, raw_json FROM artifacts WHERE id = ?", (artifact,)
        ).fetchone()
        return tuple(row) if row else None
    finally:
        conn.close()


def _show(out: TextIO, label: str, row: tuple[object, ...] | None) -> None:
    if row is None:
        out.write(f"  {label}: (no row)\n")
        return
    title, updated_at, raw_json = row
    text = str(raw_json)
    text = text if len(text) <= 90 else text[:87] + "..."
    out.write(f"  {label}: title={title!r}\n    updated_at={updated_at!r}\n    raw_json={text}\n")


def show_round_trip(config: Config, db: Path, dsn: str, out: TextIO) -> int:
    config = replace(config, metrics=MetricsConfig(address=""))
    out.write("\nround trip: the app now writes to PostgreSQL; the reverse stream brings it back\n")

    def say(line: str) -> None:
        out.write(f"  {line}\n")

    reverse_init(config, out=say)
    # The application's own session (not the replicator's): its writes are captured.
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT min(id) FROM artifacts").fetchone()
        if found is None or found[0] is None:
            out.write("  no artifact in PostgreSQL to edit\n")
            return 1
        artifact = int(found[0])
        conn.execute(
            "UPDATE artifacts SET title = coalesce(title, '') || ' (edited in PostgreSQL)', "
            "updated_at = now(), raw_json = coalesce(raw_json, '{}'::jsonb) || "
            "'{\"edited\": true}'::jsonb WHERE id = %s",
            (artifact,),
        )
        conn.execute(
            "DELETE FROM artifact_scores WHERE artifact_id = "
            "(SELECT max(artifact_id) FROM artifact_scores)"
        )
    _show(out, f"artifact {artifact} in SQLite before", _sqlite_row(db, artifact))
    ReverseDaemon(config, once=True, install_signals=False).run()
    _show(out, f"artifact {artifact} in SQLite after ", _sqlite_row(db, artifact))
    status = read_reverse_status(config)
    out.write("\n" + status.render() + "\n")
    return 0 if status.in_sync else 1
