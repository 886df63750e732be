"""``python -m replicator.demo.sample generate|write``: either half in its own process."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from replicator.demo.sample.build import SampleReport, generate_reference_db
from replicator.demo.sample.writer import WriterStats, run_writer


def _report_json(report: SampleReport) -> str:
    kinds = Counter(str(cell.kind) for cell in report.bad_cells)
    return json.dumps(
        {
            "path": str(report.path),
            "seed": report.seed,
            "rows": dict(report.rows),
            "total_rows": report.total_rows,
            "bad_cells": len(report.bad_cells),
            "bad_kinds": dict(sorted(kinds.items())),
            "seconds": round(report.seconds, 3),
        },
        ensure_ascii=False,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replicator.demo.sample",
        description="Reference-application sample databases and a simulated live application.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="create and fill a reference-app SQLite file")
    gen.add_argument("path", type=Path)
    gen.add_argument("--artifacts", type=int, default=50_000, help="number of artifacts")
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument(
        "--no-bad-values",
        dest="bad_values",
        action="store_false",
        help="plant no cells the PostgreSQL target would refuse",
    )
    gen.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="write only the artifacts table",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file")
    write = commands.add_parser("write", help="write to a reference-app file like the app does")
    write.add_argument("path", type=Path)
    write.add_argument(
        "--duration",
        type=float,
        required=True,
        help="seconds to run ('inf' runs until SIGTERM/SIGINT)",
    )
    write.add_argument(
        "--rate",
        type=float,
        default=None,
        help="transactions per second (default: as fast as possible)",
    )
    write.add_argument("--seed", type=int, default=2)
    return parser


def _write_until_signalled(args: argparse.Namespace) -> WriterStats:
    """Signal handlers only set the stop event; the writer thread finishes its
    transaction and returns. (The main thread never waits on the event itself,
    so a handler can never re-enter a lock the main thread holds.)"""
    stop = threading.Event()
    result: list[WriterStats] = []
    failure: list[BaseException] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def work() -> None:
        try:
            result.append(
                run_writer(
                    args.path, duration=args.duration, rate=args.rate, seed=args.seed, stop=stop
                )
            )
        except BaseException as exc:
            failure.append(exc)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        thread = threading.Thread(target=work, name="app-writer")
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    return result[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line (the report, or the writer's stats) and return 0."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            report = generate_reference_db(
                args.path,
                artifacts=args.artifacts,
                seed=args.seed,
                bad_values=args.bad_values,
                children=args.children,
                overwrite=args.overwrite,
            )
            print(_report_json(report), flush=True)
        else:
            print(_write_until_signalled(args).to_json(), flush=True)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
