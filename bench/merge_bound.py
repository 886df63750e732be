#!/usr/bin/env python3
"""PostgreSQL's own bound for a catch-up: the change log replayed as bare staging merges.

    python bench/merge_bound.py --source DB --target DSN --after SEQ [--upto SEQ]
                                [--config config/reference-app.toml] [--batch 10000]

Whatever a replicator does, PostgreSQL has to run, for each batch of changes, at
least: a COPY of the batch's rows into a staging table, one ``INSERT ... SELECT ...
ON CONFLICT (key) DO UPDATE`` per table (every index, GIN included, updated), a
``DELETE ... USING`` for the deleted keys, and a commit. This replays the change log
(after ``--after``, up to ``--upto``) as exactly those statements, in batches of the
daemon's size, coalesced per row as the daemon coalesces them
(``replicator.stream.apply.Applier.prepare``), into ``--target`` (a copy of the
target as it was before the catch-up: it is changed). Each batch's rows are
converted and formatted as COPY text before its statements run, and only the
statements are timed: the result, changes per second, is what one PostgreSQL
session could do with nothing else in the way. ``bench/stream.py`` runs it on a
copy of the target next to each catch-up and reports the replicator's rate as a
ratio to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()


@dataclass
class Bound:
    changes: int  # changes replayed
    batches: int
    seconds: float  # PostgreSQL statement time (COPY, merges, deletes, commits)
    prepare_seconds: float  # reading, coalescing, converting and formatting (not counted)
    rows_upserted: int
    rows_deleted: int
    dead_letters: int  # rows the conversion refused (none in a clean backlog)
    load: str = ""  # the machine's load meanwhile (bench/stream.py fills it in)

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0


def replay(
    db: Path,
    dsn: str,
    config_path: Path,
    after: int,
    upto: int | None = None,
    batch: int = 10_000,
) -> Bound:
    from psycopg import sql
    from psycopg.adapt import Transformer

    from replicator.config import load_config
    from replicator.identifiers import pg_ident
    from replicator.plan.tables import build_plans
    from replicator.source.changelog import read_changes
    from replicator.source.sqlite import open_source
    from replicator.stream.apply import Applier
    from replicator.target.connection import connect
    from replicator.target.writer import copy_payload

    config = load_config(config_path, env={}, overrides={"source.path": str(db), "target.url": dsn})
    source = open_source(db, readonly=True)
    conn = connect(dsn, autocommit=True)
    plans = build_plans(source, conn, config)
    applier = Applier(plans, config.target.state_schema)
    formatter = Transformer(conn)
    by_name = {p.source.name: p for p in plans}
    merges: dict[str, tuple[sql.Composable, ...]] = {}
    for i, plan in enumerate(plans):
        up, down = pg_ident(f"bound_up_{i}"), pg_ident(f"bound_down_{i}")
        cols = plan.target_column_list()
        key = sql.SQL(", ").join(pg_ident(k) for k in plan.target_key)
        non_key = [c.target for c in plan.columns if c.target not in plan.target_key]
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(pg_ident(c), pg_ident(c)) for c in non_key
                )
            )
            if non_key
            else sql.SQL("DO NOTHING")
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{k} = d.{k}").format(k=pg_ident(k)) for k in plan.target_key
        )
        for stage, what in ((up, cols), (down, key)):
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
                ).format(stage, what, plan.table)
            )
        merges[plan.source.name] = (
            sql.SQL("COPY {} ({}) FROM STDIN").format(up, cols),
            sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                plan.table, cols, cols, up, key, action
            ),
            sql.SQL("COPY {} ({}) FROM STDIN").format(down, key),
            sql.SQL("DELETE FROM {} AS t USING {} AS d WHERE {}").format(plan.table, down, match),
        )
    result = Bound(0, 0, 0.0, 0.0, 0, 0, 0)
    position = after
    try:
        while True:
            started = time.perf_counter()
            limit = batch if upto is None else min(batch, upto - position)
            if limit <= 0:
                break
            changes = read_changes(source, position, limit, 1 << 30)
            if not changes:
                break
            position = changes[-1].seq
            prepared = applier.prepare(changes, formatter=formatter)
            upserts: list[tuple[str, bytes]] = []
            for table, rows in prepared.upserts.items():
                payload = prepared.payloads.get(table) or copy_payload(formatter, rows)
                assert payload is not None
                upserts.append((table, payload))
                result.rows_upserted += len(rows)
            for table, groups in prepared.partial.items():  # (images missing columns)
                for rows in groups.values():
                    raise RuntimeError(f"{table}: {len(rows)} partial images; not replayed")
            deletes: list[tuple[str, bytes]] = []
            for table, keys in prepared.deletes.items():
                payload = copy_payload(formatter, keys)
                assert payload is not None
                deletes.append((table, payload))
                result.rows_deleted += len(keys)
            result.dead_letters += len(prepared.dead_letters)
            result.prepare_seconds += time.perf_counter() - started
            order = {name: n for n, name in enumerate(by_name)}
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                for table, payload in sorted(deletes, key=lambda d: -order[d[0]]):
                    copy_down, delete = merges[table][2], merges[table][3]
                    with cur.copy(copy_down) as copy:
                        copy.write(payload)
                    cur.execute(delete)
                for table, payload in sorted(upserts, key=lambda u: order[u[0]]):
                    copy_up, merge = merges[table][0], merges[table][1]
                    with cur.copy(copy_up) as copy:
                        copy.write(payload)
                    cur.execute(merge)
            result.seconds += time.perf_counter() - started
            result.changes += len(changes)
            result.batches += 1
    finally:
        conn.close()
        source.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--target", required=True, help="a DSN; its tables are changed")
    p.add_argument("--after", type=int, required=True, help="replay changes after this seq")
    p.add_argument("--upto", type=int, default=None)
    p.add_argument("--config", type=Path, default=bl.code_root() / "config" / "reference-app.toml")
    p.add_argument("--batch", type=int, default=10_000)
    a = p.parse_args()
    bound = replay(a.source, a.target, a.config, a.after, a.upto, a.batch)
    print(json.dumps({**bound.__dict__, "rate": bound.rate}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
