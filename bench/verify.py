"""Cost of `replicator verify` on a replicated reference-app database.

    python bench/verify.py [--artifacts 1000000] [--dsn URL] [--out docs/benchmarks.md]

Snapshots the cached reference database (bench/out, generated when missing)
into a fresh database with the app's schema, then times `replicator verify`
over every table (row counts, chunked checksums of normalised values, orphan,
JSON and sequence checks) and records its wall time, rows/s and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    DEFAULT_DSN,
    REPLICATED_TABLES,
    REPO,
    apply_reference_schema,
    drop_database,
    fmt_int,
    machine_info,
    machine_lines,
    recreate_database,
    reference_db,
    replicator_command,
    sqlite_counts,
    uptime,
    write_section,
)

TABLES = REPLICATED_TABLES


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, exit code, peak RSS in MB), the peak as GNU time reports it."""
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", *cmd],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"{cmd[-1]} failed with exit code {proc.returncode}")
    peak_kb = int(proc.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    return wall, proc.returncode, peak_kb // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=1_000_000)
    parser.add_argument("--dsn", default=os.environ.get("REPLICATOR_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="Print, do not edit the docs.")
    args = parser.parse_args()

    source = reference_db(args.artifacts, 1, bad_values=False)
    rows = sum(sqlite_counts(source, TABLES).values())
    dsn = recreate_database(args.dsn, "bench_verify")
    load_before = uptime()
    try:
        apply_reference_schema(dsn)
        env = {
            **os.environ,
            "DATABASE_PATH": str(source),
            "DATABASE_URL": dsn,
            "REPLICATOR_LOG_LEVEL": "warning",
        }
        config = ["--config", str(REPO / "config" / "reference-app.toml")]
        snap_s, _, _ = timed([*replicator_command(), *config, "snapshot"], env)
        verify_s, code, verify_rss = timed([*replicator_command(), *config, "verify"], env)
    finally:
        drop_database(args.dsn, "bench_verify")
    info = machine_info(args.dsn)
    body = [
        "## Verify",
        "",
        *machine_lines(info),
        "",
        f"Command: `python bench/verify.py --artifacts {args.artifacts}`.",
        "",
        f"Source: `{source.name}`, {fmt_int(rows)} rows in the 10 replicated tables, "
        f"snapshotted first ({snap_s:.0f} s), then `replicator verify` over all of them.",
        "",
        "| measurement | figure |",
        "|---|---|",
        f"| verify wall time | {verify_s:.1f} s |",
        f"| rows verified per second | {fmt_int(rows / verify_s)} |",
        f"| verify peak RSS | {verify_rss} MB |",
        f"| verdict | exit {code} ({'identical' if code == 0 else 'differences'}) |",
        "",
        f"Machine load (`uptime`) before: `{load_before}`; after: `{uptime()}`.",
    ]
    text = "\n".join(body)
    if args.no_write:
        print(text)
    else:
        write_section(args.out, "verify", text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
