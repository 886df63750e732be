"""Reference-application databases to replicate, and an application to write to them.

Why this exists: the demo, the test suite and the benchmarks all need a SQLite
file that looks like the reference app's ``var/app.db`` (11 tables, both
timestamp styles, JSON as text, astral-plane text, self-references), some cells
the stricter PostgreSQL target has to refuse, and an app that keeps writing
while replication runs. Everything is deterministic by seed, so a failing test
can be rerun on the same bytes.

Two promises the tests build on:

* every bad cell is listed in :class:`SampleReport` and every row that holds
  one holds exactly one, never in a key column, and never in a row that has
  children; so "rows in PostgreSQL + dead letters == rows in SQLite" must hold
  exactly, table by table;
* :func:`run_writer` counts what it commits, and adds exactly one to some
  tweet's ``like_count`` per transaction, so "sum(like_count) rose by
  ``increments``" catches a change applied twice or lost.

``python -m replicator.demo.sample generate|write`` runs either half in its own
process (``--help`` for the flags).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any, Final, TypeVar

from replicator.identifiers import sqlite_ident

__all__ = [
    "REFERENCE_PG_SCHEMA",
    "REFERENCE_SQLITE_SCHEMA",
    "REFERENCE_TABLES",
    "SQLITE_ALEMBIC_VERSION",
    "BadCell",
    "BadKind",
    "SampleReport",
    "TableChanges",
    "WriterStats",
    "generate_reference_db",
    "main",
    "run_writer",
]


class _Rng(random.Random):
    """``random.Random`` plus cheap picks: ``choice``/``randrange`` cost ~0.4 us
    each (rejection sampling), which is most of the time at a million rows."""

    def pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self.random() * len(seq))]

    def below(self, n: int) -> int:
        return int(self.random() * n)

    def between(self, low: int, high: int) -> int:
        """An int in ``[low, high)``, like ``randrange(low, high)``."""
        return low + int(self.random() * (high - low))

    def distinct(self, seq: Sequence[_T], k: int) -> list[_T]:
        """``k`` different items (a run of ``seq`` read as a ring), k <= len(seq)."""
        start = int(self.random() * len(seq))
        run = list(seq[start : start + k])
        return run + list(seq[: k - len(run)])


def _seeded(*parts: object) -> _Rng:
    """A generator that depends only on ``parts``: string seeds are hashed with
    SHA-512, so streams are stable across processes and Python builds."""
    return _Rng(":".join(["replicator.sample", *map(str, parts)]))


_T = TypeVar("_T")


def _package_sql(name: str) -> str:
    return (resources.files("replicator") / "data" / "reference_app" / name).read_text(
        encoding="utf-8"
    )


REFERENCE_SQLITE_SCHEMA: Final[str] = _package_sql("sqlite_schema.sql")
"""The source schema (run with ``executescript``; it switches the file to WAL)."""

REFERENCE_PG_SCHEMA: Final[str] = _package_sql("postgres_schema.sql")
"""The target schema, as the app's own migrations create it in PostgreSQL."""

REFERENCE_TABLES: Final[tuple[str, ...]] = (
    "alembic_version",
    "tweets",
    "artifacts",
    "artifact_classifications",
    "artifact_scores",
    "discovery_labels",
    "experiments",
    "experiment_runs",
    "snapshots",
    "beta_users",
    "cursors",
)
"""All tables of the reference app, parents before children."""

SQLITE_ALEMBIC_VERSION: Final[str] = "20251101_0009"
"""The SQLite-era migration head; the target has its own (20251112_0010)."""

BAD_ROW_FRACTION: Final[float] = 0.002


class BadKind(StrEnum):
    """Why PostgreSQL refuses a cell (values compare equal to their strings)."""

    TOO_LONG = "too_long"
    BAD_JSON = "bad_json"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_BOOLEAN = "bad_boolean"
    NOT_INTEGER = "not_integer"
    INT_OUT_OF_RANGE = "int_out_of_range"
    NUL_CHARACTER = "nul_character"


@dataclass(frozen=True, slots=True)
class BadCell:
    """One planted cell the target must refuse; ``key`` is the row's primary key."""

    table: str
    key: tuple[object, ...]
    column: str
    value: object
    kind: BadKind


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


# --------------------------------------------------------------------------
# What the target accepts. Parsed from the PostgreSQL schema itself, so the
# writer can tell a planted bad row from a clean one without a side table.


@dataclass(frozen=True, slots=True)
class _PgColumn:
    name: str
    kind: str  # text | varchar | int4 | int8 | float8 | timestamp | jsonb | bool
    length: int | None
    not_null: bool


_PG_TYPES: Final[Mapping[str, str]] = {
    "BIGSERIAL": "int8",
    "BIGINT": "int8",
    "INTEGER": "int4",
    "TEXT": "text",
    "VARCHAR": "varchar",
    "TIMESTAMP": "timestamp",
    "JSONB": "jsonb",
    "BOOLEAN": "bool",
    "DOUBLE PRECISION": "float8",
}
_TABLE_RE = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\);", re.DOTALL)
_COLUMN_RE = re.compile(r"^\s*(\w+)\s+(DOUBLE PRECISION|[A-Z]+)(?:\((\d+)\))?(.*)$")
_INT_RANGE: Final[Mapping[str, tuple[int, int]]] = {
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
}


def _parse_pg_schema(text: str) -> dict[str, dict[str, _PgColumn]]:
    tables: dict[str, dict[str, _PgColumn]] = {}
    for table, body in _TABLE_RE.findall(text):
        columns: dict[str, _PgColumn] = {}
        for line in body.splitlines():
            match = _COLUMN_RE.match(line)
            if match is None or match[1] == "CONSTRAINT":
                continue
            rest = match[4]
            columns[match[1]] = _PgColumn(
                name=match[1],
                kind=_PG_TYPES[match[2]],
                length=int(match[3]) if match[3] else None,
                not_null="NOT NULL" in rest or "PRIMARY KEY" in rest,
            )
        tables[table] = columns
    return tables


_PG_COLUMNS: Final = _parse_pg_schema(REFERENCE_PG_SCHEMA)


def _reject_constant(token: str) -> object:
    raise ValueError(f"JSON constant {token} is not valid in jsonb")


def _pg_accepts(column: _PgColumn, value: object) -> bool:
    """Whether the target would store ``value`` in ``column`` unchanged in meaning."""
    if value is None:
        return not column.not_null
    kind = column.kind
    if kind in ("int4", "int8"):
        low, high = _INT_RANGE[kind]
        return type(value) is int and low <= value <= high
    if kind == "float8":
        return type(value) in (int, float)
    if kind == "bool":
        return type(value) is int and value in (0, 1)
    if not isinstance(value, str) or "\x00" in value:
        return False
    if kind == "varchar":
        return column.length is None or len(value) <= column.length
    if kind == "timestamp":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if kind == "jsonb":
        if "\\u0000" in value:
            return False
        try:
            json.loads(value, parse_constant=_reject_constant)
        except ValueError:
            return False
        return True
    return True


def _row_is_clean(table: str, names: Sequence[str], row: Sequence[object]) -> bool:
    columns = _PG_COLUMNS[table]
    return all(_pg_accepts(columns[n], v) for n, v in zip(names, row, strict=True))


# --------------------------------------------------------------------------
# Timestamps in the app's styles, formatted by hand: strftime is the single
# most expensive call when a million rows need three timestamps each.

_NOW_EPOCH: Final = int(datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC).timestamp())
_DAY: Final = 86_400
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()

_TS_API = 0  # 2025-11-12T08:15:30Z        (upstream APIs)
_TS_SQL = 1  # 2025-11-12 08:15:30         (datetime('now'))
_TS_API_MS = 2  # 2025-11-12T08:15:30.123Z
_TS_API_US = 3  # 2025-11-12T08:15:30.123456Z
_TS_SQL_MS = 4  # 2025-11-12 08:15:30.123   (strftime('%f'))
_TS_PLUS2 = 5  # 2025-11-12T10:15:30+02:00  (same instant, local time)
_TS_MINUS5 = 6  # 2025-11-12T03:15:30-05:00
_API_STYLES: Final = (
    (_TS_API,) * 14 + (_TS_API_MS, _TS_API_US, _TS_PLUS2, _TS_MINUS5) + (_TS_SQL,) * 2
)
_SQL_STYLES: Final = (_TS_SQL,) * 17 + (_TS_SQL_MS, _TS_API, _TS_API)

_day_strings: dict[int, str] = {}
_MINUTE_SECOND: Final = tuple(f"{m:02d}:{s:02d}" for m in range(60) for s in range(60))


def _format_ts(epoch: int, style: int, micros: int) -> str:
    suffix = ""
    if style == _TS_PLUS2:
        epoch, suffix = epoch + 7200, "+02:00"
    elif style == _TS_MINUS5:
        epoch, suffix = epoch - 18000, "-05:00"
    day, second = divmod(epoch, _DAY)
    day_text = _day_strings.get(day)
    if day_text is None:
        day_text = _day_strings[day] = date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
    hour, rest = divmod(second, 3600)
    clock = f"{hour:02d}:{_MINUTE_SECOND[rest]}"
    if style == _TS_SQL:
        return f"{day_text} {clock}"
    if style == _TS_API:
        return f"{day_text}T{clock}Z"
    if style == _TS_SQL_MS:
        return f"{day_text} {clock}.{micros // 1000:03d}"
    if style == _TS_API_MS:
        return f"{day_text}T{clock}.{micros // 1000:03d}Z"
    if style == _TS_API_US:
        return f"{day_text}T{clock}.{micros:06d}Z"
    return f"{day_text}T{clock}{suffix}"


def _utc_now_api() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# Vocabulary. Pools are built once per seed; rows draw from them.

# fmt: off

_WORDS: Final = (
    "sparse", "attention", "diffusion", "transformer", "retrieval", "agents", "benchmark",
    "scaling", "alignment", "graph", "neural", "quantum", "reasoning", "protein", "robotics",
    "compiler", "latency", "federated", "contrastive", "tokenizer", "distillation",
    "mixture-of-experts", "state-space", "kernel", "inference", "memory", "causal",
    "multimodal", "speculative", "decoding", "quantization", "curriculum", "reward", "policy",
    "planning", "embedding", "vector", "search", "synthetic", "data", "evaluation",
    "interpretability", "circuits", "long-context", "caching", "streaming", "consensus",
    "replication", "SQLite", "Postgres", "Rust", "WebGPU", "on-device", "low-rank", "adapters",
    "self-play", "verifier", "theorem", "proving", "materials", "climate", "weather",
    "genomics", "single-cell", "molecules", "uncertainty", "calibration", "robustness",
    "jailbreaks", "watermarking", "privacy", "optimizers", "Muon", "schedules", "tokens",
    "latent", "world-models",
)
_UNICODE_BITS: Final = (
    "🚀", "🔥", "🧠", "🤖", "📈", "🦀", "🧪", "👩\u200d🔬",  # astral plane; a ZWJ sequence
    "\U0001d53c[reward]",  # double-struck E, astral plane
    "大规模语言模型的推理能力", "知識グラフ", "深層学習による画像認識", "트랜스포머 분석",
    "𠀋𠂢 (CJK Ext. B)", "naïve Bayes", "Schrödinger", "Gödel", "e\u0301tude",  # combining accent
    "التعلم العميق", "Ω(n log n)", "\u2248 3\u00d7 faster",
)
_TITLE_TEMPLATES: Final = (
    "{A} {b} for {c} {d}",
    "Towards {a} {b}",
    "{A} {b}: {c} {d} at scale",
    "On the {a} of {b} {c}",
    "{A}-{b} {c} with {d} {e}",
    "Why {a} {b} fails",
    "{A} {b} is all you need",
    "Learning {a} {b} from {c}",
    "A survey of {a} {b}",
    "{A}{b}: fast {c} {d}",
)
_SENTENCE_TEMPLATES: Final = (
    "We propose {a} {b}, a method for {c} {d} that needs no {e}.",
    "Our {a} {b} improves {c} by {n}% over strong {d} baselines.",
    'We call this "{a} {b}" and show it\'s competitive with {c}.',
    "Experiments on {n} {a} datasets suggest {b} {c} matters more than {d}.",
    "The {a} {b} scales to {n}k {c} with constant {d}.",
    "Code and {a} checkpoints are released for {b} {c}.",
    "Surprisingly, {a} {b} emerges without explicit {c} supervision.",
    "We analyse {a} under {b} shift and report {c} {d} failures.",
)
_FIRST_NAMES: Final = (
    "Ada", "Alan", "Grace", "Yann", "Fei-Fei", "Geoffrey", "José", "Zoë", "Łukasz", "Søren",
    "Nguyễn", "王伟", "さくら", "민준", "Aisha", "Priya", "Olu", "Mateo", "Ingrid", "Chen",
)
_LAST_NAMES: Final = (
    "Lovelace", "Turing", "Hopper", "Li", "Hinton", "García", "Müller", "Kowalski", "Nielsen",
    "Tran", "张", "佐藤", "김", "Okafor", "Sharma", "Rossi", "Andersson", "Dubois",
)
_CATEGORIES: Final = (
    "llm", "agents", "robotics", "vision", "theory", "systems", "safety", "bio", "climate",
    "databases", "hci", "security",
)
_SENTIMENTS: Final = ("positive", "neutral", "negative", "mixed")
_TAGS: Final = (
    "open-source", "sota", "reproducible", "dataset", "benchmark", "preprint", "rust", "python",
    "cuda", "on-device", "long-context", "rlhf", "eval", "多言語", "🔥",
)
# fmt: on
_LANGS: Final = ("en",) * 14 + ("ja", "zh", "ko", "de", "fr", "pt", "und", "es")
_ANNOTATORS: Final = (
    "alice",
    "bob",
    "chen.wei",
    "dana",
    "zoë",
    "llm:gpt-4o-mini",
    "llm:claude-3-5-sonnet",
    "llm:llama-3.1-70b",
)
_LABELS: Final = ("relevant", "irrelevant", "breakthrough", "duplicate", "spam", "needs_review")
_MODELS: Final = ("gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20241022", "llama-3.1-70b")
_ARXIV_CATEGORIES: Final = ("cs.LG", "cs.AI", "cs.CL", "cs.CV", "cs.RO", "cs.DB", "stat.ML")
_PROG_LANGS: Final = ("Python", "Rust", "C++", "Go", "TypeScript", "Julia", None)
_VENUES: Final = ("NeurIPS", "ICML", "ICLR", "ACL", "VLDB", "SIGMOD", "Nature", "arXiv")
_CURSOR_BASES: Final = (
    "arxiv:cs.LG",
    "arxiv:cs.AI",
    "arxiv:cs.CL",
    "arxiv:stat.ML",
    "github:trending:python",
    "github:search:stars>500",
    "x:list:ai-researchers",
    "x:home_timeline",
    "ss:bulk:2025",
    "ss:citations",
)
_STATUSES_EXPERIMENT: Final = ("draft", "running", "completed", "completed", "archived")
_STATUSES_BETA: Final = ("pending", "active", "active", "active", "revoked")
_X_ID_BASE: Final = 1_850_000_000_000_000_000
_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
_ENCODE_ASCII: Final = json.JSONEncoder(allow_nan=False).encode  # \ud83d\ude80 escapes


class _Content:
    """Realistic values, drawn from pools built once per seed."""

    def __init__(self, seed: int) -> None:
        rng = _seeded(seed, "pools")
        self.titles = tuple(self._title(rng) for _ in range(4096))
        self.sentences = tuple(self._sentence(rng) for _ in range(2048))
        self.people = tuple(f"{rng.pick(_FIRST_NAMES)} {rng.pick(_LAST_NAMES)}" for _ in range(512))
        self.handles = tuple(
            f"{rng.pick(_WORDS).lower().replace('-', '_')}_{rng.below(10_000)}" for _ in range(2048)
        )
        # An LLM once answered with a 64-character category: valid, but only
        # if "64" is counted in characters, not bytes or UTF-16 units.
        self.edge_category = ("分類" * 31) + "🧠🤖"
        assert len(self.edge_category) == 64

    @staticmethod
    def _title(rng: _Rng) -> str:
        words = rng.sample(_WORDS, 5)  # once per pool entry: quality over speed
        title = rng.pick(_TITLE_TEMPLATES).format(
            A=words[0].capitalize(), a=words[0], b=words[1], c=words[2], d=words[3], e=words[4]
        )
        if rng.random() < 0.1:
            title = f"{title} {rng.pick(_UNICODE_BITS)}"
        return title

    @staticmethod
    def _sentence(rng: _Rng) -> str:
        words = rng.sample(_WORDS, 5)  # once per pool entry: quality over speed
        text = rng.pick(_SENTENCE_TEMPLATES).format(
            a=words[0], b=words[1], c=words[2], d=words[3], e=words[4], n=rng.between(2, 97)
        )
        if rng.random() < 0.12:
            text = f"{text} ({rng.pick(_UNICODE_BITS)})"
        return text

    def abstract(self, rng: _Rng) -> str:
        picked = rng.distinct(self.sentences, rng.between(2, 5))
        if rng.random() < 0.1:
            return " ".join(picked[:1]) + "\n\n" + " ".join(picked[1:])
        return " ".join(picked)

    def post(self, rng: _Rng) -> str:
        text = f"{rng.pick(self.sentences)} {rng.pick(_UNICODE_BITS)} #{rng.pick(_TAGS)}"
        return text[:280]

    def authors(self, rng: _Rng) -> str | None:
        roll = rng.random()
        if roll < 0.03:
            return None
        if roll < 0.06:
            return "[]"
        count = 1 + int(rng.random() ** 2 * 6)
        return "[" + ", ".join(str(rng.between(1, 200_000)) for _ in range(count)) + "]"

    def tags(self, rng: _Rng) -> str:
        return _ENCODE(rng.distinct(_TAGS, rng.between(0, 4)))

    def artifact(self, rng: _Rng, k: int, published: int) -> tuple[object, ...]:
        """(type, source, source_id, title, text, url, published_at, author_entity_ids,
        raw_json); ``source_id`` is unique per source because ``k`` is the row id."""
        roll = rng.random()
        title: str | None = self.titles[int(rng.random() * 4096)]
        ts_style = _API_STYLES[int(rng.random() * 20)]
        published_at: str | None = _format_ts(published, ts_style, int(rng.random() * 1e6))
        raw: dict[str, object]
        if roll < 0.40:
            source, kind = "arxiv", ("preprint" if roll < 0.36 else "paper")
            month = 24 * 12 + k // 100_000  # months since 2000-01
            source_id = f"{month // 12:02d}{month % 12 + 1:02d}.{k % 100_000:05d}"
            url = f"https://arxiv.org/abs/{source_id}"
            text: str | None = self.abstract(rng)
            category = rng.pick(_ARXIV_CATEGORIES)
            raw = {
                "id": f"http://arxiv.org/abs/{source_id}v{rng.between(1, 4)}",
                "title": title,
                "authors": [{"name": p} for p in rng.distinct(self.people, rng.between(1, 5))],
                "primary_category": category,
                "categories": [category, rng.pick(_ARXIV_CATEGORIES)],
                "links": [
                    {"href": url, "rel": "alternate"},
                    {"href": f"https://arxiv.org/pdf/{source_id}", "title": "pdf"},
                ],
                "comment": f"{rng.between(6, 40)} pages, {rng.between(1, 12)} figures",
                "journal_ref": None,
            }
        elif roll < 0.65:
            source, kind = "github", "repo"
            owner = self.handles[int(rng.random() * 2048)]
            source_id = f"{owner}/{rng.pick(_WORDS).lower()}-{k}"
            url = f"https://github.com/{source_id}"
            if rng.random() < 0.002:  # exactly at the VARCHAR(2048) limit: valid
                url = (url + "?tab=readme-ov-file&q=").ljust(2048, "q")
            text = rng.pick(self.sentences) if rng.random() < 0.8 else None
            raw = {
                "full_name": source_id,
                "description": title,
                "stargazers_count": int(rng.random() ** 3 * 90_000),
                "forks_count": int(rng.random() ** 3 * 9_000),
                "language": rng.pick(_PROG_LANGS),
                "topics": rng.distinct(_TAGS, rng.between(0, 4)),
                "owner": {"login": owner, "type": rng.pick(("User", "Organization"))},
                "license": {"spdx_id": "MIT"} if rng.random() < 0.7 else None,
                "fork": False,
                "archived": rng.random() < 0.05,
            }
        elif roll < 0.85:
            source, kind = "x", "post"
            handle = self.handles[int(rng.random() * 2048)]
            source_id = str(_X_ID_BASE + k * 4096 + rng.below(4096))
            url = f"https://x.com/{handle}/status/{source_id}"
            text = self.post(rng)
            title = None if rng.random() < 0.7 else title
            raw = {
                "data": {
                    "id": source_id,
                    "text": text,
                    "lang": rng.pick(_LANGS),
                    "author_id": str(rng.between(10**8, 10**18)),
                    "public_metrics": {
                        "like_count": int(rng.random() ** 4 * 50_000),
                        "retweet_count": int(rng.random() ** 4 * 5_000),
                        "reply_count": rng.below(200),
                    },
                },
                "includes": {"users": [{"username": handle, "name": rng.pick(self.people)}]},
            }
        else:
            source, kind = "ss", "paper"
            source_id = f"{rng.getrandbits(128):032x}{k:08x}"
            url = f"https://www.semanticscholar.org/paper/{source_id}"
            text = self.abstract(rng) if rng.random() < 0.9 else None
            raw = {
                "paperId": source_id,
                "title": title,
                "year": 2019 + rng.below(7),
                "venue": rng.pick(_VENUES),
                "citationCount": int(rng.random() ** 3 * 4_000),
                "influentialCitationCount": rng.below(40),
                "fieldsOfStudy": ["Computer Science"],
                "externalIds": {"DOI": f"10.48550/arXiv.{rng.below(10**8):08d}"},
                "tldr": {"model": "tldr@v2.0.0", "text": rng.pick(self.sentences)},
            }
        if rng.random() < 0.02:
            published_at = None
        encode = _ENCODE_ASCII if rng.random() < 0.1 else _ENCODE
        return (
            kind,
            source,
            source_id,
            title,
            text,
            url,
            published_at,
            self.authors(rng),
            encode(raw),
        )

    def classification(self, rng: _Rng, created: int) -> tuple[object, ...]:
        """(category, sentiment, urgency, tags, reasoning, raw_json, created_at, updated_at)"""
        category = rng.pick(_CATEGORIES) if rng.random() > 0.001 else self.edge_category
        sentiment = rng.pick(_SENTIMENTS)
        urgency = rng.between(1, 6) if rng.random() < 0.95 else None
        tags = rng.distinct(_TAGS, rng.between(0, 4))
        reasoning = rng.pick(self.sentences)
        raw = {
            "model": rng.pick(_MODELS),
            "category": category,
            "sentiment": sentiment,
            "urgency": urgency,
            "tags": tags,
            "confidence": rng.random(),
            "usage": {
                "prompt_tokens": rng.between(200, 4000),
                "completion_tokens": rng.between(20, 400),
            },
        }
        updated = created + (0 if rng.random() < 0.7 else rng.below(3 * _DAY))
        return (
            category,
            sentiment,
            urgency,
            _ENCODE(tags),
            reasoning,
            _ENCODE(raw),
            _format_ts(created, _SQL_STYLES[int(rng.random() * 20)], rng.below(10**6)),
            _format_ts(updated, _SQL_STYLES[int(rng.random() * 20)], rng.below(10**6)),
        )

    @staticmethod
    def scores(rng: _Rng, computed: int) -> tuple[object, ...]:
        """(novelty, emergence, obscurity, discovery_score, computed_at)"""
        rnd = rng.random
        novelty = rnd() if rnd() < 0.95 else None
        emergence = rnd() if rnd() < 0.95 else None
        obscurity = rnd() if rnd() < 0.95 else None
        discovery = (
            0.4 * novelty + 0.35 * emergence + 0.25 * obscurity
            if novelty is not None and emergence is not None and obscurity is not None
            else None
        )
        computed_at = _format_ts(computed, _SQL_STYLES[int(rnd() * 20)], int(rnd() * 1e6))
        return (novelty, emergence, obscurity, discovery, computed_at)

    def label(self, rng: _Rng, annotator: str, created: int) -> tuple[object, ...]:
        """(label, confidence, annotator, notes, created_at, updated_at)"""
        notes = rng.pick(self.sentences) if rng.random() < 0.3 else None
        created_at = _format_ts(created, _SQL_STYLES[int(rng.random() * 20)], 0)
        return (
            rng.pick(_LABELS),
            rng.random() if rng.random() < 0.9 else None,
            annotator,
            notes,
            created_at,
            created_at,
        )

    def tweet(self, rng: _Rng, published: int) -> tuple[object, ...]:
        """(text, author_id, author_username, created_at, lang, like_count, retweet_count,
        reply_count, quote_count, category, sentiment, urgency, tags, reasoning, salience,
        notified_at); a fresh tweet's likes are left to the caller."""
        rnd = rng.random
        notified = _format_ts(published + 600, _TS_API, 0) if rnd() < 0.1 else None
        return (
            self.post(rng),
            str(rng.between(10**8, 10**18)),
            self.handles[int(rnd() * 2048)],
            _format_ts(published, _API_STYLES[int(rnd() * 20)], int(rnd() * 1e6)),
            _LANGS[int(rnd() * len(_LANGS))],
            int(rnd() ** 4 * 50_000),
            int(rnd() ** 4 * 5_000),
            int(rnd() ** 3 * 300),
            int(rnd() ** 3 * 100),
            rng.pick(_CATEGORIES) if rnd() < 0.8 else None,
            rng.pick(_SENTIMENTS) if rnd() < 0.8 else None,
            rng.between(1, 6) if rnd() < 0.8 else None,
            self.tags(rng),
            rng.pick(self.sentences) if rnd() < 0.5 else None,
            rnd(),
            notified,
        )


# --------------------------------------------------------------------------
# Planted bad cells: which column of which table gets what. Never a key
# column, and rows that get one are generated without children.

_LONG_URL: Final = "https://arxiv.org/abs/2511.01234?utm_source=" + "x" * 2048


@dataclass(frozen=True, slots=True)
class _BadSpec:
    column: str
    kind: BadKind
    values: tuple[object, ...]


_TOO_BIG_INTS: Final = (2**31, -(2**31) - 1, 2**63 - 1)
_BAD_TIMESTAMPS: Final = ("2025-13-45 99:00:00", "2025-02-30T10:00:00Z", "next tuesday")
_NOT_INTEGERS: Final = ("n/a", "unknown")
_BAD_SPECS: Final[Mapping[str, tuple[_BadSpec, ...]]] = {
    "artifacts": (
        _BadSpec("url", BadKind.TOO_LONG, (_LONG_URL,)),
        _BadSpec(
            "raw_json",
            BadKind.BAD_JSON,
            ('{"id": "2511.01234", "title": "Sparse attention at sc', "{'id': '2511.01234'}"),
        ),
        _BadSpec("published_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
        _BadSpec("title", BadKind.NUL_CHARACTER, ("Sparse attention\x00 revisited",)),
        _BadSpec("author_entity_ids", BadKind.BAD_JSON, ("[101, 202,",)),
        _BadSpec("updated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS[::-1]),
    ),
    "artifact_classifications": (
        _BadSpec("raw_json", BadKind.BAD_JSON, ('{"model": "gpt-4o-mini", "tags": [,]}',)),
        _BadSpec("urgency", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("urgency", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("reasoning", BadKind.NUL_CHARACTER, ("Relevant\x00 to agents.",)),
        _BadSpec(
            "category",
            BadKind.TOO_LONG,
            ("LLM agents / tool use / evaluation harnesses / benchmark contamination analysis",),
        ),
        _BadSpec("tags", BadKind.BAD_JSON, ("['llm', 'agents']",)),
    ),
    "artifact_scores": (_BadSpec("computed_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),),
    "discovery_labels": (
        _BadSpec("label", BadKind.TOO_LONG, ("relevant-but-needs-domain-expert-review",)),
        _BadSpec("notes", BadKind.NUL_CHARACTER, ("see thread\x00",)),
        _BadSpec("created_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "tweets": (
        _BadSpec(
            "author_username", BadKind.TOO_LONG, ("the_real_" + "research_signal_" * 5, "研究" * 33)
        ),
        _BadSpec("retweet_count", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("reply_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("tags", BadKind.BAD_JSON, ('["llm", "agents"',)),
        _BadSpec("created_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
        _BadSpec("text", BadKind.NUL_CHARACTER, ("gm\x00 frens 🚀",)),
        _BadSpec("lang", BadKind.TOO_LONG, ("en-US-x-twitter",)),
        _BadSpec("quote_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS[::-1]),
    ),
    "experiments": (
        _BadSpec("scoring_weights", BadKind.BAD_JSON, ('{"novelty": 0.4, "emergence": 0.6,}',)),
    ),
    "experiment_runs": (
        _BadSpec("artifact_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("true_positives", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("metadata", BadKind.BAD_JSON, ('{"git_sha": "3f2a9c1", "seed": 7',)),
        _BadSpec("started_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "snapshots": (
        _BadSpec("meta", BadKind.BAD_JSON, ("{tables: 11}",)),
        _BadSpec("checksum", BadKind.TOO_LONG, ("sha512:" + "ab" * 64,)),
    ),
    "beta_users": (
        _BadSpec("is_admin", BadKind.BAD_BOOLEAN, (2, "maybe")),
        _BadSpec("invite_code", BadKind.TOO_LONG, ("INVITE-" + "7F3K9QX2" * 8,)),
        _BadSpec("activated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "cursors": (
        _BadSpec("value", BadKind.NUL_CHARACTER, ("eyJwYWdlIjogMn0=\x00",)),
        _BadSpec("updated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
}


def _column_order(schema: str) -> dict[str, tuple[str, ...]]:
    """Each table's columns in declaration order (lowercase names; keywords are upper)."""
    return {
        table: tuple(m[1] for line in body.splitlines() if (m := _SQLITE_COLUMN_RE.match(line)))
        for table, body in _TABLE_RE.findall(schema)
    }


_SQLITE_COLUMN_RE = re.compile(r"\s+([a-z_][a-z0-9_]*)\s")
_INSERT_COLUMNS: Final = _column_order(REFERENCE_SQLITE_SCHEMA)
"""Every generated row is a full row, in the source schema's column order."""


def _insert_sql(table: str, columns: Sequence[str] | None = None) -> str:
    names = _INSERT_COLUMNS[table] if columns is None else columns
    return (
        f"INSERT INTO {sqlite_ident(table)} ({', '.join(sqlite_ident(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )


def _bad_count(rows: int, enabled: bool) -> int:
    if not enabled or rows <= 1:
        return 0
    return max(1, round(rows * BAD_ROW_FRACTION))


def _pick(rng: _Rng, population: int, count: int, exclude: set[int]) -> set[int]:
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
        self.content = _Content(seed)
        self.bad_cells: list[BadCell] = []
        self._bad_ordinal: Counter[str] = Counter()
        rng = self._rng("plan")
        n = sizes.artifacts
        # Indices are 0-based here; row ids are index + 1.
        self.bad_artifacts = _pick(rng, n, _bad_count(n, bad_values), set())
        taken = set(self.bad_artifacts)
        self.bad_child: dict[str, set[int]] = {}
        for table, share in (
            ("artifact_classifications", 0.9),
            ("artifact_scores", 0.93),
            ("discovery_labels", 0.7),
        ):
            wanted = _bad_count(int(n * share), bad_values and children)
            self.bad_child[table] = _pick(rng, n, wanted, taken)
            taken |= self.bad_child[table]
        self.bad_rows = {
            table: _pick(rng, count, _bad_count(count, bad_values), set())
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

    def _rng(self, stream: str) -> _Rng:
        return _seeded(self.seed, stream)

    def _spoil(self, table: str, row: tuple[object, ...]) -> tuple[object, ...]:
        """Replace one non-key cell of ``row`` (whose first cell is its key) and record it."""
        specs = _BAD_SPECS[table]
        ordinal = self._bad_ordinal[table]
        self._bad_ordinal[table] += 1
        spec = specs[ordinal % len(specs)]
        value = spec.values[(ordinal // len(specs)) % len(spec.values)]
        index = _INSERT_COLUMNS[table].index(spec.column)
        cells = list(row)
        cells[index] = value
        self.bad_cells.append(BadCell(table, (row[0],), spec.column, value, spec.kind))
        return tuple(cells)

    def fill(self, conn: sqlite3.Connection) -> dict[str, int]:
        conn.execute(_insert_sql("alembic_version"), (SQLITE_ALEMBIC_VERSION,))
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
            conn.executemany(_insert_sql(table), rows())
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
        span = 720 * _DAY
        for index in range(self.sizes.artifacts):
            k = index + 1
            published = _NOW_EPOCH - int(rnd() * span)
            created = min(_NOW_EPOCH, published + int(rnd() ** 3 * 20 * _DAY))
            updated = created if rnd() < 0.6 else created + int(rnd() * (_NOW_EPOCH - created))
            created_by_index[index] = created
            row = (
                k,
                *artifact(rng, k, published),
                _format_ts(created, _SQL_STYLES[int(rnd() * 20)], int(rnd() * 1e6)),
                _format_ts(updated, _SQL_STYLES[int(rnd() * 20)], int(rnd() * 1e6)),
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
            row = (index + 1, *build(rng, created[index] + rng.between(60, 7 * _DAY)))
            yield self._spoil(table, row) if is_bad else row

    def _labels(self) -> Iterator[tuple[object, ...]]:
        table = "discovery_labels"
        rng = self._rng(table)
        build = self.content.label
        created = self.created
        label_id = 0
        # 35% of artifacts are labelled, by one to three annotators (~0.7 per artifact).
        for index, is_bad in self._child_indices(table, 0.35):
            for position, annotator in enumerate(rng.distinct(_ANNOTATORS, rng.between(1, 4))):
                label_id += 1
                at = created[index] + rng.between(3_600, 30 * _DAY)
                row = (label_id, index + 1, *build(rng, annotator, at))
                yield self._spoil(table, row) if is_bad and position == 0 else row

    def _tweets(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("tweets")
        build = self.content.tweet
        bad = self.bad_rows["tweets"]
        span = 400 * _DAY
        for index in range(self.sizes.tweets):
            published = _NOW_EPOCH - int(rng.random() * span)
            tweet_id = str(_X_ID_BASE + index * 4096 + rng.below(4096))
            inserted = _format_ts(published + rng.between(30, 900), _TS_SQL, 0)
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
            created = _NOW_EPOCH - rng.below(200 * _DAY)
            row = (
                k,
                f"exp-{k:04d}-{rng.pick(_WORDS).lower()}",
                rng.pick(self.content.sentences),
                _ENCODE(weights),
                baseline,
                rng.pick(_STATUSES_EXPERIMENT),
                _format_ts(created, _TS_SQL, 0),
                _format_ts(created + rng.below(10 * _DAY), _TS_SQL, 0),
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
            row = (index + 1, *_run_values(rng, rng.pick(clean), _NOW_EPOCH))
            yield self._spoil("experiment_runs", row) if index in bad else row

    def _snapshots(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("snapshots")
        bad = self.bad_rows["snapshots"]
        count = self.sizes.snapshots
        for index in range(count):
            created = _NOW_EPOCH - (count - index) * _DAY // 2
            name = f"nightly-{_format_ts(created, _TS_SQL, 0)[:10]}-{index + 1}"
            meta = {
                "tables": 11,
                "compressed": rng.random() < 0.5,
                "bytes": rng.between(10**6, 10**10),
                "app_version": f"0.9.{rng.below(10)}",
            }
            row = (
                index + 1,
                name,
                _format_ts(created, _TS_SQL, 0),
                rng.between(10**4, 10**10),
                f"{rng.getrandbits(256):064x}",
                f"var/snapshots/{name}.db",
                _ENCODE(meta),
            )
            yield self._spoil("snapshots", row) if index in bad else row

    def _beta_users(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("beta_users")
        bad = self.bad_rows["beta_users"]
        for index in range(self.sizes.beta_users):
            first, last = rng.pick(_FIRST_NAMES), rng.pick(_LAST_NAMES)
            status = rng.pick(_STATUSES_BETA)
            created = _NOW_EPOCH - rng.below(90 * _DAY)
            activated = (
                _format_ts(created + rng.below(3 * _DAY), _TS_SQL, 0)
                if status != "pending"
                else None
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
                _format_ts(created, _TS_SQL, 0),
                activated,
                _ENCODE(metadata),
            )
            yield self._spoil("beta_users", row) if index in bad else row

    def _cursors(self) -> Iterator[tuple[object, ...]]:
        rng = self._rng("cursors")
        bad = self.bad_rows["cursors"]
        for index in range(self.sizes.cursors):
            base = _CURSOR_BASES[index % len(_CURSOR_BASES)]
            name = base if index < len(_CURSOR_BASES) else f"{base}:{index // len(_CURSOR_BASES)}"
            at = _NOW_EPOCH - rng.below(2 * _DAY)
            value = (
                _format_ts(at, _TS_API, 0)
                if rng.random() < 0.5
                else f"page:{rng.getrandbits(48):x}"
            )
            row = (name, value, _format_ts(at, _TS_SQL, 0))
            yield self._spoil("cursors", row) if index in bad else row


def _run_values(rng: _Rng, experiment_id: int, now: int) -> tuple[object, ...]:
    """experiment_runs values after ``id`` (the app and the generator share them)."""
    tp, fp, tn, fn = (rng.between(0, 500) for _ in range(4))
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else None
    )
    started = now - rng.below(120 * _DAY)
    running = rng.random() < 0.1
    completed = None if running else _format_ts(started + rng.between(60, 7_200), _TS_SQL, 0)
    metadata = {"git_sha": f"{rng.getrandbits(28):07x}", "seed": rng.below(100), "gpu": "A100"}
    return (
        experiment_id,
        total,
        tp,
        fp,
        tn,
        fn,
        precision,
        recall,
        f1,
        (tp + tn) / total if total else None,
        _format_ts(started, _TS_SQL, 0),
        completed,
        "running" if running else "completed",
        _ENCODE(metadata),
    )


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


# --------------------------------------------------------------------------
# The application, simulated.


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
        self.rng = _seeded(seed, "writer")
        self.content = _Content(seed)
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
        return row if _row_is_clean(table, row.keys(), tuple(row)) else None

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
                _row_is_clean(child, r.keys(), tuple(r))
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
        values = self.content.artifact(rng, k, self._now_epoch() - rng.below(3 * _DAY))
        # created_at / updated_at come from the schema's datetime('now') defaults.
        self.conn.execute(_insert_sql("artifacts", _INSERT_COLUMNS["artifacts"][:10]), (k, *values))
        self.tally.add("artifacts", _INSERT)
        now = self._now_epoch()
        if rng.random() < 0.9:
            self._insert_child(
                "artifact_classifications", (k, *self.content.classification(rng, now))
            )
        if rng.random() < 0.9:
            self._insert_child("artifact_scores", (k, *self.content.scores(rng, now)))
        if rng.random() < 0.3:
            for annotator in rng.distinct(_ANNOTATORS, rng.between(1, 3)):
                label = self.content.label(rng, annotator, now)
                self._insert_child("discovery_labels", (None, k, *label))

    def _insert_child(self, table: str, row: tuple[object, ...]) -> None:
        self.conn.execute(_insert_sql(table), row)
        self.tally.add(table, _INSERT)

    def _new_tweet_id(self) -> str:
        top = self.conn.execute("SELECT max(tweet_id) FROM tweets").fetchone()[0]
        try:
            base = int(top) if top is not None else _X_ID_BASE
        except ValueError:
            base = _X_ID_BASE
        return str(max(base, _X_ID_BASE) + self.rng.between(1, 4096))

    def insert_tweet(self) -> str:
        tweet_id = self._new_tweet_id()
        values = list(self.content.tweet(self.rng, self._now_epoch()))
        values[5] = 0  # like_count: a fresh tweet has none yet, so increments stay exact
        columns = _INSERT_COLUMNS["tweets"][:17]  # inserted_at/updated_at: defaults
        self.conn.execute(_insert_sql("tweets", columns), (tweet_id, *values))
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
                row = (None, *_run_values(self.rng, experiment["id"], self._now_epoch()))
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
            raw["refreshed_at"] = _utc_now_api()
            raw["fetch_count"] = int(raw.get("fetch_count", 0)) + 1
        cursor = self.conn.execute(
            "UPDATE artifacts SET raw_json = ?, updated_at = datetime('now') WHERE id = ?",
            (_ENCODE(raw), artifact["id"]),
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
            annotator = self.rng.pick(_ANNOTATORS)
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO discovery_labels (artifact_id, label, confidence, annotator)"
                " VALUES (?, ?, ?, ?)",
                (artifact["id"], self.rng.pick(_LABELS), self.rng.random(), annotator),
            )
            self.tally.add("discovery_labels", _INSERT, cursor.rowcount)
            return
        cursor = self.conn.execute(
            "UPDATE discovery_labels SET label = ?, confidence = ?, updated_at = datetime('now')"
            " WHERE id = ?",
            (self.rng.pick(_LABELS), self.rng.random(), label["id"]),
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
                (new_name, _utc_now_api(), name),
            )
            self.tally.add("cursors", _UPDATE, cursor.rowcount)
            return
        self.conn.execute(
            "INSERT INTO cursors (name, value) VALUES (?, ?)",
            (f"x:list:{self.rng.getrandbits(48):x}", _utc_now_api()),
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


# --------------------------------------------------------------------------
# python -m replicator.demo.sample


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


if __name__ == "__main__":
    sys.exit(main())
