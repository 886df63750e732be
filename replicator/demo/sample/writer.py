"""The reference application, simulated: short, valid write transactions.

:func:`run_writer` counts what it commits, and adds exactly one to some
tweet's ``like_count`` per transaction, so "sum(like_count) rose by
``increments``" catches a change applied twice or lost downstream.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from replicator.demo.sample.content import Content, run_values, seeded
from replicator.demo.sample.pgschema import row_is_clean
from replicator.demo.sample.schema import INSERT_COLUMNS, insert_sql
from replicator.demo.sample.timestamps import DAY, utc_now_api
from replicator.demo.sample.vocabulary import ANNOTATORS, ENCODE, LABELS, X_ID_BASE
from replicator.identifiers import sqlite_ident


@dataclass(frozen=True, slots=True)
class TableChanges:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What :func:`run_writer` committed (rolled-back work is not counted).

    ``inserts``/``updates``/``deletes`` count rows, across tables, including
    rows removed by ON DELETE CASCADE and the ``like_count`` increments (which
    ``increments`` counts again on their own). ``tables`` has the same per table,
    so ``count(table)`` afterwards is ``before + inserts - deletes``.
    """

    inserts: int
    updates: int
    deletes: int
    increments: int
    transactions: int
    seconds: float
    busy_retries: int = 0
    tables: Mapping[str, TableChanges] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, object] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "tables"
        }
        data["tables"] = {name: asdict(changes) for name, changes in self.tables.items()}
        return json.dumps(data, sort_keys=True)


class _Tally:
    def __init__(self) -> None:
        self.changes: dict[str, list[int]] = {}

    def add(self, table: str, op: int, rows: int = 1) -> None:
        self.changes.setdefault(table, [0, 0, 0])[op] += rows

    def merge(self, other: _Tally) -> None:
        for table, counts in other.changes.items():
            mine = self.changes.setdefault(table, [0, 0, 0])
            for op in range(3):
                mine[op] += counts[op]


_INSERT, _UPDATE, _DELETE = 0, 1, 2
_ARTIFACT_CHILDREN: Final = ("artifact_classifications", "artifact_scores", "discovery_labels")
_CANDIDATE_TRIES: Final = 8
_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class _App:
    """One connection behaving like the reference app: short, valid transactions."""

    def __init__(self, conn: sqlite3.Connection, seed: int) -> None:
        self.conn = conn
        self.rng = seeded(seed, "writer")
        self.content = Content(seed)
        self.tally = _Tally()
        self.ops: tuple[Callable[[], object], ...] = (
            (self.insert_artifact,) * 30
            + (self.insert_tweet,) * 10
            + (self.insert_run,) * 5
            + (self.update_scores,) * 20
            + (self.touch_artifact,) * 10
            + (self.edit_raw_json,) * 10
            + (self.relabel,) * 5
            + (self.rename_cursor,) * 2
            + (self.delete_artifact,) * 8
        )

    # -- choosing rows the target holds (never a planted bad one) ------------

    def _clean_row(self, table: str, where: str, params: Sequence[object]) -> sqlite3.Row | None:
        cursor = self.conn.execute(f"SELECT * FROM {sqlite_ident(table)} {where}", params)
        row: sqlite3.Row | None = cursor.fetchone()
        if row is None:
            return None
        return row if row_is_clean(table, row.keys(), tuple(row)) else None

    def _bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """min and max of an indexed column. Two statements on purpose: SQLite
        answers a lone min() or max() from the index, but scans for both at once."""
        name, col = sqlite_ident(table), sqlite_ident(column)
        low = self.conn.execute(f"SELECT min({col}) FROM {name}").fetchone()[0]
        high = self.conn.execute(f"SELECT max({col}) FROM {name}").fetchone()[0]
        return low, high

    def _random_artifact(self, *, with_children_clean: bool = False) -> sqlite3.Row | None:
        bounds = self._bounds("artifacts", "id")
        if bounds[0] is None:
            return None
        for _ in range(_CANDIDATE_TRIES):
            pick = self.rng.randint(bounds[0], bounds[1])
            row = self._clean_row("artifacts", "WHERE id >= ? ORDER BY id LIMIT 1", (pick,))
            if row is None:
                continue
            if with_children_clean and not all(
                row_is_clean(child, r.keys(), tuple(r))
                for child in _ARTIFACT_CHILDREN
                for r in self.conn.execute(
                    f"SELECT * FROM {sqlite_ident(child)} WHERE artifact_id = ?", (row["id"],)
                )
            ):
                continue
            return row
        return None

    def _random_tweet(self) -> sqlite3.Row | None:
        bounds = self._bounds("tweets", "tweet_id")
        if bounds[0] is None:
            return None
        try:
            low, high = int(bounds[0]), int(bounds[1])
        except ValueError:
            low = high = 0
        for _ in range(_CANDIDATE_TRIES):
            pick = str(self.rng.randint(low, high)) if high > low else bounds[0]
            row = self._clean_row(
                "tweets", "WHERE tweet_id >= ? ORDER BY tweet_id LIMIT 1", (pick,)
            )
            if row is not None:
                return row
        return None

    def _now_epoch(self) -> int:
        return int(time.time())

    # -- the operations -------------------------------------------------------

    def insert_artifact(self) -> None:
        rng = self.rng
        seq = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'artifacts'"
        ).fetchone()
        last = self.conn.execute("SELECT max(id) FROM artifacts").fetchone()[0] or 0
        k = max(last, seq[0] if seq else 0) + 1
        values = self.content.artifact(rng, k, self._now_epoch() - rng.below(3 * DAY))
        # created_at / updated_at come from the schema's datetime('now') defaults.
        self.conn.execute(insert_sql("artifacts", INSERT_COLUMNS["artifacts"][:10]), (k, *values))
        self.tally.add("artifacts", _INSERT)
        now = self._now_epoch()
        if rng.random() < 0.9:
            self._insert_child(
                "artifact_classifications", (k, *self.content.classification(rng, now))
            )
        if rng.random() < 0.9:
            self._insert_child("artifact_scores", (k, *self.content.scores(rng, now)))
        if rng.random() < 0.3:
            for annotator in rng.distinct(ANNOTATORS, rng.between(1, 3)):
                label = self.content.label(rng, annotator, now)
                self._insert_child("discovery_labels", (None, k, *label))

    def _insert_child(self, table: str, row: tuple[object, ...]) -> None:
        self.conn.execute(insert_sql(table), row)
        self.tally.add(table, _INSERT)

    def _new_tweet_id(self) -> str:
        top = self.conn.execute("SELECT max(tweet_id) FROM tweets").fetchone()[0]
        try:
            base = int(top) if top is not None else X_ID_BASE
        except ValueError:
            base = X_ID_BASE
        return str(max(base, X_ID_BASE) + self.rng.between(1, 4096))

    def insert_tweet(self) -> str:
        tweet_id = self._new_tweet_id()
        values = list(self.content.tweet(self.rng, self._now_epoch()))
        values[5] = 0  # like_count: a fresh tweet has none yet, so increments stay exact
        columns = INSERT_COLUMNS["tweets"][:17]  # inserted_at/updated_at: defaults
        self.conn.execute(insert_sql("tweets", columns), (tweet_id, *values))
        self.tally.add("tweets", _INSERT)
        return tweet_id

    def insert_run(self) -> None:
        bounds = self._bounds("experiments", "id")
        if bounds[0] is None:
            self.insert_artifact()
            return
        for _ in range(_CANDIDATE_TRIES):
            pick = self.rng.randint(bounds[0], bounds[1])
            experiment = self._clean_row(
                "experiments", "WHERE id >= ? ORDER BY id LIMIT 1", (pick,)
            )
            if experiment is not None:
                row = (None, *run_values(self.rng, experiment["id"], self._now_epoch()))
                self._insert_child("experiment_runs", row)
                return
        self.insert_artifact()

    def update_scores(self) -> None:
        artifact = self._random_artifact()
        if artifact is None:
            self.insert_artifact()
            return
        score = self._clean_row("artifact_scores", "WHERE artifact_id = ?", (artifact["id"],))
        if score is None:
            self.touch_artifact()
            return
        rnd = self.rng.random
        novelty, emergence, obscurity = rnd(), rnd(), rnd()
        cursor = self.conn.execute(
            "UPDATE artifact_scores SET novelty = ?, emergence = ?, obscurity = ?, "
            "discovery_score = ?, computed_at = datetime('now') WHERE artifact_id = ?",
            (
                novelty,
                emergence,
                obscurity,
                0.4 * novelty + 0.35 * emergence + 0.25 * obscurity,
                artifact["id"],
            ),
        )
        self.tally.add("artifact_scores", _UPDATE, cursor.rowcount)

    def touch_artifact(self) -> None:
        artifact = self._random_artifact()
        if artifact is None:
            self.insert_artifact()
            return
        cursor = self.conn.execute(
            "UPDATE artifacts SET updated_at = datetime('now') WHERE id = ?", (artifact["id"],)
        )
        self.tally.add("artifacts", _UPDATE, cursor.rowcount)

    def edit_raw_json(self) -> None:
        artifact = self._random_artifact()
        if artifact is None or artifact["raw_json"] is None:
            self.insert_artifact()
            return
        raw = json.loads(artifact["raw_json"])
        if isinstance(raw, dict):
            raw["refreshed_at"] = utc_now_api()
            raw["fetch_count"] = int(raw.get("fetch_count", 0)) + 1
        cursor = self.conn.execute(
            "UPDATE artifacts SET raw_json = ?, updated_at = datetime('now') WHERE id = ?",
            (ENCODE(raw), artifact["id"]),
        )
        self.tally.add("artifacts", _UPDATE, cursor.rowcount)

    def relabel(self) -> None:
        artifact = self._random_artifact()
        if artifact is None:
            self.insert_artifact()
            return
        label = self._clean_row(
            "discovery_labels", "WHERE artifact_id = ? ORDER BY id LIMIT 1", (artifact["id"],)
        )
        if label is None:
            annotator = self.rng.pick(ANNOTATORS)
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO discovery_labels (artifact_id, label, confidence, annotator)"
                " VALUES (?, ?, ?, ?)",
                (artifact["id"], self.rng.pick(LABELS), self.rng.random(), annotator),
            )
            self.tally.add("discovery_labels", _INSERT, cursor.rowcount)
            return
        cursor = self.conn.execute(
            "UPDATE discovery_labels SET label = ?, confidence = ?, updated_at = datetime('now')"
            " WHERE id = ?",
            (self.rng.pick(LABELS), self.rng.random(), label["id"]),
        )
        self.tally.add("discovery_labels", _UPDATE, cursor.rowcount)

    def rename_cursor(self) -> None:
        """A primary-key change: the app renames a cursor now and then."""
        names = [r[0] for r in self.conn.execute("SELECT name FROM cursors ORDER BY name")]
        self.rng.shuffle(names)
        for name in names[:_CANDIDATE_TRIES]:
            if self._clean_row("cursors", "WHERE name = ?", (name,)) is None:
                continue
            base = name.split("@", 1)[0][:100]
            new_name = f"{base}@{self.rng.getrandbits(32):08x}"
            if self.conn.execute("SELECT 1 FROM cursors WHERE name = ?", (new_name,)).fetchone():
                continue
            cursor = self.conn.execute(
                "UPDATE cursors SET name = ?, value = ?, updated_at = datetime('now')"
                " WHERE name = ?",
                (new_name, utc_now_api(), name),
            )
            self.tally.add("cursors", _UPDATE, cursor.rowcount)
            return
        self.conn.execute(
            "INSERT INTO cursors (name, value) VALUES (?, ?)",
            (f"x:list:{self.rng.getrandbits(48):x}", utc_now_api()),
        )
        self.tally.add("cursors", _INSERT)

    def delete_artifact(self) -> None:
        artifact = self._random_artifact(with_children_clean=True)
        if artifact is None:
            self.insert_artifact()
            return
        for child in _ARTIFACT_CHILDREN:
            (count,) = self.conn.execute(
                f"SELECT count(*) FROM {sqlite_ident(child)} WHERE artifact_id = ?",
                (artifact["id"],),
            ).fetchone()
            self.tally.add(child, _DELETE, count)
        cursor = self.conn.execute("DELETE FROM artifacts WHERE id = ?", (artifact["id"],))
        self.tally.add("artifacts", _DELETE, cursor.rowcount)

    def increment_likes(self) -> None:
        tweet = self._random_tweet()
        tweet_id = self.insert_tweet() if tweet is None else tweet["tweet_id"]
        cursor = self.conn.execute(
            "UPDATE tweets SET like_count = like_count + 1 WHERE tweet_id = ?", (tweet_id,)
        )
        if cursor.rowcount != 1:
            raise RuntimeError(f"like_count increment touched {cursor.rowcount} rows")
        self.tally.add("tweets", _UPDATE)

    def iteration(self) -> _Tally:
        """One application action and one like, in one IMMEDIATE transaction."""
        self.tally = _Tally()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.rng.pick(self.ops)()
            self.increment_likes()
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return self.tally


def run_writer(
    path: str | Path,
    *,
    duration: float,
    rate: float | None = None,
    seed: int = 2,
    stop: threading.Event | None = None,
) -> WriterStats:
    """Write to the database at ``path`` like the reference app does.

    Runs for ``duration`` seconds or until ``stop`` is set, whichever is first;
    the transaction in hand is always finished. ``rate`` is transactions per
    second (None: as fast as possible). Each transaction is one application
    action (insert an artifact with children, a tweet or an experiment run;
    update scores, ``updated_at`` or ``raw_json``; relabel; rename a cursor,
    i.e. change a primary key; delete an artifact, cascading) plus one
    ``like_count + 1`` on a tweet. Rows holding a planted bad cell are never
    touched, and nothing invalid is written.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for as fast as possible)")
    if not Path(path).is_file():  # connect() would quietly create an empty database
        raise FileNotFoundError(f"no database at {path}")
    if stop is None:
        stop = threading.Event()
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    total = _Tally()
    transactions = increments = busy = 0
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        app = _App(conn, seed)
        started = due = time.monotonic()
        deadline = started + duration
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                tally = app.iteration()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES:  # primary code
                    raise
                busy += 1
                stop.wait(0.05)
                continue
            total.merge(tally)
            transactions += 1
            increments += 1
            if rate is not None:
                due += 1.0 / rate
                now = time.monotonic()
                if due > now:
                    stop.wait(min(due, deadline) - now)
                elif now - due > 1.0:  # fell behind (lock waits): don't burst to catch up
                    due = now
    finally:
        conn.close()
    tables = {name: TableChanges(*counts) for name, counts in sorted(total.changes.items())}
    return WriterStats(
        inserts=sum(t.inserts for t in tables.values()),
        updates=sum(t.updates for t in tables.values()),
        deletes=sum(t.deletes for t in tables.values()),
        increments=increments,
        transactions=transactions,
        seconds=time.monotonic() - started,
        busy_retries=busy,
        tables=MappingProxyType(tables),
    )
