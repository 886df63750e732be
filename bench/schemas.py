"""Bench-only source databases beside the reference app: a light schema and a wide-text one.

The reference schema's GIN index makes PostgreSQL the bottleneck of any copy into it;
these two make the client the bottleneck instead, so a slow conversion path shows.

light
    ``artifacts`` (1M by default), ``artifact_scores`` (2M) and ``tweets`` (0.5M):
    integer keys, one UNIQUE each, a timestamp, a JSON object, a 0/1 boolean and a
    double per row; no foreign key, no GIN. SQLite declares ``TIMESTAMP``, ``JSON``,
    ``BOOLEAN`` and ``REAL``, so the tables the replicator creates have the same types
    as the existing ones in :data:`LIGHT_PG_SCHEMA` (bigint, timestamptz, jsonb,
    boolean, double precision).
wide
    ``documents``: few rows of long text (a title, a ~2 KB body, a URL, an author,
    a tag list), the case where bytes, not values, are the work.

Each database is generated once per size and seed and cached under ``bench/out/``.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from benchlib import OUT, log

LIGHT_TABLES = ("artifacts", "artifact_scores", "tweets")
WIDE_TABLES = ("documents",)

LIGHT_SQLITE_SCHEMA = """
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    source_id TEXT NOT NULL UNIQUE,
    published_at TIMESTAMP,
    meta JSON,
    is_public BOOLEAN,
    score REAL
);
CREATE TABLE artifact_scores (
    id INTEGER PRIMARY KEY,
    score_key TEXT NOT NULL UNIQUE,
    computed_at TIMESTAMP,
    detail JSON,
    flagged BOOLEAN,
    value REAL
);
CREATE TABLE tweets (
    id INTEGER PRIMARY KEY,
    tweet_id TEXT NOT NULL UNIQUE,
    created_at TIMESTAMP,
    tags JSON,
    is_reply BOOLEAN,
    salience REAL
);
"""

LIGHT_PG_SCHEMA = """
CREATE TABLE artifacts (
    id bigint PRIMARY KEY,
    source_id text NOT NULL UNIQUE,
    published_at timestamptz,
    meta jsonb,
    is_public boolean,
    score double precision
);
CREATE TABLE artifact_scores (
    id bigint PRIMARY KEY,
    score_key text NOT NULL UNIQUE,
    computed_at timestamptz,
    detail jsonb,
    flagged boolean,
    value double precision
);
CREATE TABLE tweets (
    id bigint PRIMARY KEY,
    tweet_id text NOT NULL UNIQUE,
    created_at timestamptz,
    tags jsonb,
    is_reply boolean,
    salience double precision
);
"""

WIDE_SQLITE_SCHEMA = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    body TEXT,
    url VARCHAR(2048),
    author VARCHAR(64),
    tags TEXT,
    updated_at TIMESTAMP
);
"""

WIDE_PG_SCHEMA = """
CREATE TABLE documents (
    id bigint PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    title text NOT NULL,
    body text,
    url varchar(2048),
    author varchar(64),
    tags text,
    updated_at timestamptz
);
"""

_WORDS = (
    "replica",
    "stream",
    "ledger",
    "cursor",
    "batch",
    "commit",
    "vacuum",
    "index",
    "shard",
    "tuple",
    "page",
    "latency",
    "checkpoint",
    "snapshot",
    "trigger",
    "sequence",
    "window",
    "cutover",
    "verify",
    "lag",
    "schema",
    "column",
    "insert",
    "update",
    "delete",
    "merge",
    "upsert",
    "queue",
    "backlog",
)


def _stamp(rng: random.Random, i: int) -> str:
    """SQLite's own text forms, mixed as apps write them: 'YYYY-MM-DD HH:MM:SS' mostly,
    some ISO with 'T', a fraction and an offset."""
    day = 1 + i % 28
    sec = rng.randrange(86400)
    hh, mm, ss = sec // 3600, sec // 60 % 60, sec % 60
    base = f"2024-{1 + i % 12:02d}-{day:02d}"
    if i % 10 == 0:
        return f"{base}T{hh:02d}:{mm:02d}:{ss:02d}.{rng.randrange(1000000):06d}+00:00"
    return f"{base} {hh:02d}:{mm:02d}:{ss:02d}"


def _light_rows(table: str, n: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for i in range(1, n + 1):
        stamp = _stamp(rng, i) if i % 50 else None
        flag = i % 3 == 0 if i % 40 else None
        real = rng.random() * 1000 if i % 30 else None
        if table == "artifacts":
            meta = json.dumps(
                {"lang": rng.choice(("en", "de", "fr")), "n": i, "tags": [i % 7, i % 11]}
            )
            yield (i, f"src-{i:09d}", stamp, meta, flag, real)
        elif table == "artifact_scores":
            detail = json.dumps({"model": "v3", "w": round(rng.random(), 4)})
            yield (i, f"score-{i:09d}", stamp, detail, flag, real)
        else:
            tags = json.dumps([rng.choice(_WORDS) for _ in range(1 + i % 3)])
            yield (i, f"{1_700_000_000_000 + i}", stamp, tags, flag, real)


def _wide_rows(n: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for i in range(1, n + 1):
        body = " ".join(rng.choice(_WORDS) for _ in range(280))  # ~2 KB
        yield (
            i,
            f"doc-{i:08d}",
            " ".join(rng.choice(_WORDS) for _ in range(8)).capitalize(),
            body if i % 25 else None,
            f"https://example.org/{rng.choice(_WORDS)}/{i}?ref=" + "x" * rng.randrange(40),
            f"author{i % 997}",
            ",".join(rng.choice(_WORDS) for _ in range(5)),
            _stamp(rng, i),
        )


def _build(path: Path, schema: str, fill: list[tuple[str, Iterator[tuple[object, ...]]]]) -> Path:
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f"tmp-{path.name}"
    tmp.unlink(missing_ok=True)
    log(f"generating {path.name} ...")
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(schema)
        for table, rows in fill:
            width = len(conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description)
            marks = ", ".join("?" * width)
            conn.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
            conn.commit()
    finally:
        conn.close()
    tmp.rename(path)
    log(f"generated {path.name} ({path.stat().st_size / 2**20:.0f} MB)")
    return path


def light_db(
    artifacts: int = 1_000_000, scores: int = 2_000_000, tweets: int = 500_000, seed: int = 1
) -> Path:
    """The cached light-schema database of these sizes (generated when missing)."""
    rng = random.Random(seed)
    path = OUT / f"light_a{artifacts}_s{scores}_t{tweets}_seed{seed}.db"
    return _build(
        path,
        LIGHT_SQLITE_SCHEMA,
        [
            ("artifacts", _light_rows("artifacts", artifacts, rng)),
            ("artifact_scores", _light_rows("artifact_scores", scores, rng)),
            ("tweets", _light_rows("tweets", tweets, rng)),
        ],
    )


def wide_db(rows: int = 200_000, seed: int = 1) -> Path:
    """The cached wide-text database of this size (generated when missing)."""
    rng = random.Random(seed)
    return _build(
        OUT / f"wide_d{rows}_seed{seed}.db",
        WIDE_SQLITE_SCHEMA,
        [("documents", _wide_rows(rows, rng))],
    )


def light_config_toml(db: Path, *, create_tables: bool) -> str:
    """A replicator configuration for a light or wide database (the URL comes from the
    environment or ``--target``)."""
    return (
        f'[source]\npath = "{db}"\n\n[target]\nschema = "public"\nstate_schema = "replicator"\n\n'
        '[tables]\ninclude = ["*"]\nexclude = ["sqlite_*", "_replicator_*"]\n\n'
        f'[snapshot]\non_error = "deadletter"\ncreate_tables = {str(create_tables).lower()}\n'
    )


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="generate the light / wide bench databases")
    p.add_argument("--artifacts", type=int, default=1_000_000)
    p.add_argument("--scores", type=int, default=2_000_000)
    p.add_argument("--tweets", type=int, default=500_000)
    p.add_argument("--wide", type=int, default=200_000)
    a = p.parse_args()
    print(light_db(a.artifacts, a.scores, a.tweets))
    print(wide_db(a.wide))
