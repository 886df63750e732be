"""Building a reference-app database: the rows of every table, and the report.

Each table has its own seeded stream, so the rows of one table do not depend
on how many draws another took; bad rows are chosen up front from a "plan"
stream, and the values planted in them are recorded in :class:`SampleReport`.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from replicator.demo.sample.badcells import BAD_SPECS, BadCell, bad_count
from replicator.demo.sample.content import Content, Rng, run_values, seeded
from replicator.demo.sample.schema import (
    INSERT_COLUMNS,
    REFERENCE_SQLITE_SCHEMA,
    REFERENCE_TABLES,
    SQLITE_ALEMBIC_VERSION,
    insert_sql,
)
from replicator.demo.sample.timestamps import DAY, NOW_EPOCH, SQL_STYLES, TS_API, TS_SQL, format_ts
from replicator.demo.sample.vocabulary import (
    ANNOTATORS,
    CURSOR_BASES,
    ENCODE,
    FIRST_NAMES,
    LAST_NAMES,
    STATUSES_BETA,
    STATUSES_EXPERIMENT,
    WORDS,
    X_ID_BASE,
)
from replicator.identifiers import sqlite_ident


@dataclass(frozen=True, slots=True)
class SampleReport:
    """What :func:`generate_reference_db` wrote.

    ``rows`` counts every table (zeros included). Bad rows never have children,
    so the rows that must reach PostgreSQL are exactly ``good_rows(table)``.
    """

    path: Path
    seed: int
    rows: Mapping[str, int]
    bad_cells: tuple[BadCell, ...]
    seconds: float = field(default=0.0, compare=False)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def bad_keys(self, table: str) -> frozenset[tuple[object, ...]]:
        return frozenset(cell.key for cell in self.bad_cells if cell.table == table)

    def bad_rows(self, table: str) -> int:
        return len(self.bad_keys(table))

    def good_rows(self, table: str) -> int:
        return self.rows[table] - self.bad_rows(table)


def _pick(rng: Rng, population: int, count: int, exclude: set[int]) -> set[int]:
    """``count`` distinct ints in ``[0, population)``, none from ``exclude``."""
    count = min(count, population - len(exclude))
    picked: set[int] = set()
    while len(picked) < count:
        candidate = rng.below(population)
        if candidate not in exclude:
            picked.add(candidate)
    return picked


@dataclass(frozen=True, slots=True)
class _Sizes:
    artifacts: int
    tweets: int
    experiments: int
    experiment_runs: int
    snapshots: int
    beta_users: int
    cursors: int

    @classmethod
    def for_artifacts(cls, n: int, children: bool) -> _Sizes:
        if not children:
            return cls(n, 0, 0, 0, 0, 0, 0)
        return cls(
            artifacts=n,
            tweets=max(10, n * 2 // 5),
            experiments=max(4, n // 2_500),
            experiment_runs=max(10, n // 50),
            snapshots=max(3, n // 1_000),
            beta_users=max(10, n // 100),
            cursors=max(8, min(500, n // 1_000)),
        )


class _Builder:
    """Streams the rows of one database; planted bad cells are recorded as it goes."""

    def __init__(self, seed: int, sizes: _Sizes, bad_values: bool, children: bool) -> None:
        self.seed = seed
        self.sizes = sizes
        self.children = children
        self.content = Content(seed)
        self.bad_cells: list[BadCell] = []
        self._bad_ordinal: Counter[str] = Counter()
        rng = self._rng("plan")
        n = sizes.artifacts
        # Indices are 0-based here; row ids are index + 1.
        self.bad_artifacts = _pick(rng, n, bad_count(n, bad_values), set())
        taken = set(self.bad_artifacts)
        self.bad_child: dict[str, set[int]] = {}
        for table, share in (
            ("artifact_classifications", 0.9),
            ("artifact_scores", 0.93),
            ("discovery_labels", 0.7),
        ):
            wanted = bad_count(int(n * share), bad_values and children)
            self.bad_child[table] = _pick(rng, n, wanted, taken)
            taken |= self.bad_child[table]
        self.bad_rows = {
            table: _pick(rng, count, bad_count(count, bad_values), set())
            for table, count in (
                ("tweets", sizes.tweets),
                ("experiments", sizes.experiments),
                ("experiment_runs", sizes.experiment_runs),
                ("snapshots", sizes.snapshots),
                ("beta_users", sizes.beta_users),
                ("cursors", sizes.cursors),
            )
        }
        # Bad experiments must have no runs and be nobody's baseline; keep one clean.
        if len(self.bad_rows["experiments"]) >= sizes.experiments:
            self.bad_rows["experiments"] = set()
        self.created = array("q", bytes(8 * n))  # artifacts.created_at as epoch, by index

    def _rng(self, stream: str) -> Rng:
        return seeded(self.seed, stream)

    def _spoil(self, table: str, row: tuple[object, ...]) -> tuple[object, ...]:
        """Replace one non-key cell of ``row`` (whose first cell is its key) and record it."""
        specs = BAD_SPECS[table]
        ordinal = self._bad_ordinal[table]
        self._bad_ordinal[table] += 1
        spec = specs[ordinal % len(specs)]
        value = spec.values[(ordinal // len(specs)) % len(spec.values)]
        index = INSERT_COLUMNS[table].index(spec.column)
        cells = list(row)
        cells[index] = value
        self.bad_cells.append(BadCell(table, (row[0],), spec.column, value, spec.kind))
        return tuple(cells)

    def fill(self, conn: sqlite3.Connection) -> dict[str, int]:
        conn.execute(insert_sql("alembic_version"), (SQLITE_ALEMBIC_VERSION,))
        streams: list[tuple[str, Callable[[], Iterator[tuple[object, ...]]]]] = [
            ("artifacts", self._artifacts),
        ]
        if self.children:
            streams += [
                ("artifact_classifications", self._classifications),
                ("artifact_scores", self._scores),
                ("discovery_labels", self._labels),
                ("tweets", self._tweets),
                ("experiments", self._experiments),
                ("experiment_runs", self._experiment_runs),
                ("snapshots", self._snapshots),
                ("beta_users", self._beta_users),
                ("cursors", self._cursors),
            ]
        for table, rows in streams:
            conn.executemany(insert_sql(table), rows())
        return {
            table: conn.execute(f"SELECT count(*) FROM {sqlite_ident(table)}").fetchone()[0]
            for table in REFERENCE_TABLES
        }

    # -- one generator per table ------------------------------------------

    def _artifacts(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("artifacts")
        rnd = rng.random
        artifact = self.content.artifact
        created_by_index = self.created
        bad = self.bad_artifacts
        span = 720 * DAY
        for index in range(self.sizes.artifacts):
            k = index + 1
            published = NOW_EPOCH - int(rnd() * span)
            created = min(NOW_EPOCH, published + int(rnd() ** 3 * 20 * DAY))
            updated = created if rnd() < 0.6 else created + int(rnd() * (NOW_EPOCH - created))
            created_by_index[index] = created
            row = (
                k,
                *artifact(rng, k, published),
                format_ts(created, SQL_STYLES[int(rnd() * 20)], int(rnd() * 1e6)),
                format_ts(updated, SQL_STYLES[int(rnd() * 20)], int(rnd() * 1e6)),
            )
            yield self._spoil("artifacts", row) if index in bad else row

    def _child_indices(self, table: str, share: float) -> Iterator[tuple[int, bool]]:
        """(index, is_bad) of the artifacts that get a row in ``table``."""
        rng = self._rng(f"{table}:who")
        bad_parents = self.bad_artifacts
        planted = self.bad_child[table]
        for index in range(self.sizes.artifacts):
            if index in planted:
                yield index, True
            elif rng.random() < share and index not in bad_parents:
                yield index, False

    def _classifications(self) -> Iterator[tuple[object, ...]]:
        table = "artifact_classifications"
        rng = self._rng(table)
        build = self.content.classification
        created = self.created
        for index, is_bad in self._child_indices(table, 0.9):
            at = created[index] + rng.between(30, 3_600)
            row = (index + 1, *build(rng, at))
            yield self._spoil(table, row) if is_bad else row

    def _scores(self) -> Iterator[tuple[object, ...]]:
        table = "artifact_scores"
        rng = self._rng(table)
        build = self.content.scores
        created = self.created
        for index, is_bad in self._child_indices(table, 0.93):
            row = (index + 1, *build(rng, created[index] + rng.between(60, 7 * DAY)))
            yield self._spoil(table, row) if is_bad else row

    def _labels(self) -> Iterator[tuple[object, ...]]:
        table = "discovery_labels"
        rng = self._rng(table)
        build = self.content.label
        created = self.created
        label_id = 0
        # 35% of artifacts are labelled, by one to three annotators (~0.7 per artifact).
        for index, is_bad in self._child_indices(table, 0.35):
            for position, annotator in enumerate(rng.distinct(ANNOTATORS, rng.between(1, 4))):
                label_id += 1
                at = created[index] + rng.between(3_600, 30 * DAY)
                row = (label_id, index + 1, *build(rng, annotator, at))
                yield self._spoil(table, row) if is_bad and position == 0 else row

    def _tweets(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("tweets")
        build = self.content.tweet
        bad = self.bad_rows["tweets"]
        span = 400 * DAY
        for index in range(self.sizes.tweets):
            published = NOW_EPOCH - int(rng.random() * span)
            tweet_id = str(X_ID_BASE + index * 4096 + rng.below(4096))
            inserted = format_ts(published + rng.between(30, 900), TS_SQL, 0)
            row = (tweet_id, *build(rng, published), inserted, inserted)
            yield self._spoil("tweets", row) if index in bad else row

    def _experiments(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("experiments")
        bad = self.bad_rows["experiments"]
        clean_so_far: list[int] = []
        for index in range(self.sizes.experiments):
            k = index + 1
            weights = {"novelty": 0.4, "emergence": 0.35, "obscurity": 0.25}
            weights = {name: round(w + rng.uniform(-0.1, 0.1), 3) for name, w in weights.items()}
            baseline = rng.pick(clean_so_far) if clean_so_far and rng.random() < 0.5 else None
            created = NOW_EPOCH - rng.below(200 * DAY)
            row = (
                k,
                f"exp-{k:04d}-{rng.pick(WORDS).lower()}",
                rng.pick(self.content.sentences),
                ENCODE(weights),
                baseline,
                rng.pick(STATUSES_EXPERIMENT),
                format_ts(created, TS_SQL, 0),
                format_ts(created + rng.below(10 * DAY), TS_SQL, 0),
            )
            if index in bad:
                yield self._spoil("experiments", row)
            else:
                clean_so_far.append(k)
                yield row

    def _experiment_runs(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("experiment_runs")
        bad = self.bad_rows["experiment_runs"]
        clean = [
            k + 1 for k in range(self.sizes.experiments) if k not in self.bad_rows["experiments"]
        ]
        for index in range(self.sizes.experiment_runs):
            row = (index + 1, *run_values(rng, rng.pick(clean), NOW_EPOCH))
            yield self._spoil("experiment_runs", row) if index in bad else row

    def _snapshots(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("snapshots")
        bad = self.bad_rows["snapshots"]
        count = self.sizes.snapshots
        for index in range(count):
            created = NOW_EPOCH - (count - index) * DAY // 2
            name = f"nightly-{format_ts(created, TS_SQL, 0)[:10]}-{index + 1}"
            meta = {
                "tables": 11,
                "compressed": rng.random() < 0.5,
                "bytes": rng.between(10**6, 10**10),
                "app_version": f"0.9.{rng.below(10)}",
            }
            row = (
                index + 1,
                name,
                format_ts(created, TS_SQL, 0),
                rng.between(10**4, 10**10),
                f"{rng.getrandbits(256):064x}",
                f"var/snapshots/{name}.db",
                ENCODE(meta),
            )
            yield self._spoil("snapshots", row) if index in bad else row

    def _beta_users(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("beta_users")
        bad = self.bad_rows["beta_users"]
        for index in range(self.sizes.beta_users):
            first, last = rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES)
            status = rng.pick(STATUSES_BETA)
            created = NOW_EPOCH - rng.below(90 * DAY)
            activated = (
                format_ts(created + rng.below(3 * DAY), TS_SQL, 0) if status != "pending" else None
            )
            metadata = {
                "referrer": rng.pick(("hn", "x", "newsletter", None)),
                "name": f"{first} {last}",
            }
            row = (
                index + 1,
                f"{first.lower()}.{last.lower()}.{index + 1}@example.org",
                f"BETA-{rng.getrandbits(40):010X}",
                status,
                1 if index % 30 == 0 else 0,  # the founders, then every 30th invitee
                format_ts(created, TS_SQL, 0),
                activated,
                ENCODE(metadata),
            )
            yield self._spoil("beta_users", row) if index in bad else row

    def _cursors(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("cursors")
        bad = self.bad_rows["cursors"]
        for index in range(self.sizes.cursors):
            base = CURSOR_BASES[index % len(CURSOR_BASES)]
            name = base if index < len(CURSOR_BASES) else f"{base}:{index // len(CURSOR_BASES)}"
            at = NOW_EPOCH - rng.below(2 * DAY)
            value = (
                format_ts(at, TS_API, 0) if rng.random() < 0.5 else f"page:{rng.getrandbits(48):x}"
            )
            row = (name, value, format_ts(at, TS_SQL, 0))
            yield self._spoil("cursors", row) if index in bad else row


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def generate_reference_db(
    path: str | Path,
    *,
    artifacts: int = 50_000,
    seed: int = 1,
    bad_values: bool = True,
    children: bool = True,
    overwrite: bool = False,
) -> SampleReport:
    """Create a reference-app SQLite database at ``path`` and fill it.

    ``children=False`` writes only ``artifacts`` (and the ``alembic_version``
    row). The content depends only on the arguments, never on the clock.
    Written in one transaction with journaling and syncing off (a half-written
    file is deleted, never left behind); the file is left in WAL mode.
    """
    if artifacts < 0:
        raise ValueError("artifacts must be >= 0")
    target = Path(path)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists (overwrite=True, or --overwrite, replaces it)")
        _remove_database(target)
    started = time.perf_counter()
    builder = _Builder(seed, _Sizes.for_artifacts(artifacts, children), bad_values, children)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.executescript(REFERENCE_SQLITE_SCHEMA)
        # One transaction without a journal: nothing else can see the file yet,
        # and a failure deletes it, so the rollback journal would buy nothing.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("BEGIN")
        # Secondary indexes are built once at the end (a sort) rather than
        # maintained row by row in random order; the same SQL text recreates them.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {sqlite_ident(name)}")
        rows = builder.fill(conn)
        for _, create in indexes:
            conn.execute(create)
        conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous = FULL")  # SQLite's default
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"could not switch {target} back to WAL (got {mode!r})")
    except BaseException:
        conn.close()
        _remove_database(target)
        raise
    conn.close()
    return SampleReport(
        path=target,
        seed=seed,
        rows=MappingProxyType(rows),
        bad_cells=tuple(builder.bad_cells),
        seconds=time.perf_counter() - started,
    )
