#!/usr/bin/env python3
"""Experiment: how much would overlapping the SQLite read + conversion with the COPY gain?

    python bench/proto_overlap.py [--artifacts 100000] [--chunk-rows 5000] [--rounds 2]
                                  [--code af87a5e]

Not a benchmark of the replicator and not a design for it: a throwaway harness
that drives the replicator's own pieces (table plans, ``ChunkReader``,
``convert_rows``, ``TableWriter.copy``) in two ways into fresh copies of the
app's indexed schema, alternating:

sequential
    read a chunk, convert it, COPY it, commit; the next chunk (what
    ``Snapshotter.copy_table`` does, minus checkpoints and dead letters);
overlapped
    a thread reads and converts the next chunk while the main thread COPYs and
    commits the current one (a queue of two chunks).

Both skip the progress checkpoint and dead-letter bookkeeping, so the
difference between them is the overlap alone.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()


def load(db: Path, dsn: str, chunk_rows: int, overlapped: bool) -> tuple[int, float]:
    from replicator.config import load_config
    from replicator.plan.rows import convert_rows
    from replicator.plan.tables import build_plans
    from replicator.source.reader import ChunkReader
    from replicator.source.sqlite import open_source
    from replicator.target.connection import connect
    from replicator.target.writer import TableWriter

    config = load_config(
        bl.code_root() / "config" / "reference-app.toml",
        env={},
        overrides={"source.path": str(db), "target.url": dsn},
    )
    source = open_source(db, readonly=True)
    conn = connect(dsn, autocommit=True)
    plans = build_plans(source, conn, config)
    rows = 0
    started = time.perf_counter()
    for plan in plans:
        reader = ChunkReader(source, plan)
        writer = TableWriter(plan.shape)
        keypos = plan.key_positions

        def chunks(reader: Any = reader, plan: Any = plan, keypos: Any = keypos) -> Any:
            last = None
            while True:
                raw = reader.read(last, chunk_rows)
                if not raw:
                    return
                last = tuple(raw[-1][i] for i in keypos)
                good, _good_raw, _dead = convert_rows(plan, raw, "snapshot")
                yield good

        if overlapped:
            q: queue.Queue[Any] = queue.Queue(maxsize=2)

            def produce(gen: Any = chunks, q: queue.Queue[Any] = q) -> None:
                for item in gen():
                    q.put(item)
                q.put(None)

            t = threading.Thread(target=produce, daemon=True)
            t.start()
            while (good := q.get()) is not None:
                with conn.transaction(), conn.cursor() as cur:
                    writer.copy(cur, good)
                rows += len(good)
            t.join()
        else:
            for good in chunks():
                with conn.transaction(), conn.cursor() as cur:
                    writer.copy(cur, good)
                rows += len(good)
    seconds = time.perf_counter() - started
    conn.close()
    source.close()
    return rows, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", default="worktree", help="as in bench/snapshot.py")
    parser.add_argument("--dsn", default=bl.DEFAULT_DSN)
    args = parser.parse_args()
    db = bl.reference_db(args.artifacts, args.seed, bad_values=False)
    sampler = bl.LoadSampler().start()
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for overlapped in order:
            name = "bench_proto_overlap"
            dsn = bl.recreate_database(args.dsn, name)
            bl.apply_reference_schema(dsn)
            bl.checkpoint(args.dsn)
            label = "overlapped" if overlapped else "sequential"
            with sampler.window(f"{label}-{r}") as w:
                rows, seconds = load(db, dsn, args.chunk_rows, overlapped)
            bl.drop_database(args.dsn, name)
            print(
                f"round {r} {label:<10}: {rows:,} rows in {seconds:.1f}s = "
                f"{rows / seconds:,.0f} rows/s; {w.describe()}",
                flush=True,
            )
    sampler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
