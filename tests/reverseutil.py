"""The small app the reverse-direction tests write to: two tables whose SQLite
columns hold timestamps, booleans, JSON and numerics in the app's own forms."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    active BOOLEAN NOT NULL,
    created_at DATETIME NOT NULL,
    seen_at TIMESTAMP,
    settings JSON,
    balance NUMERIC(10,2),
    score REAL
);
CREATE TABLE tags (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    tag TEXT NOT NULL,
    pinned BOOLEAN,
    PRIMARY KEY (account_id, tag)
);
"""


def make_app_db(path: Path, accounts: int = 20) -> Path:
    """Timestamps in two styles (SQLite's ``datetime('now')`` and an API's ``...T...Z``
    with milliseconds), booleans as 0/1 in one table and as 'true'/'false' in the other."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        for i in range(1, accounts + 1):
            conn.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    i,
                    f"user{i}@example.com",
                    i % 2,
                    f"2025-01-{i % 28 + 1:02d} 10:00:00",
                    f"2025-02-{i % 28 + 1:02d}T08:15:30.{i % 1000:03d}Z",
                    f'{{"theme": "dark", "n": {i}}}',
                    i + 0.5,
                    i / 4,
                ),
            )
            conn.execute(
                "INSERT INTO tags VALUES (?, ?, ?)", (i, "t" + str(i), "true" if i % 2 else "false")
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()
