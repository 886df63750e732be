"""What the differential fuzzer generates: SQLite schemas, values and DML.

Import as ``from fuzzgen import ...`` (``tests/`` is on ``sys.path``). Like
:mod:`oracle`, this module never imports ``replicator``: whether a value is
"clean" (one the documented type mapping must carry exactly, so its row may
never be dead-lettered) is decided here, on its own, from the stored value.

Each behaviour is behind a feature switch. The CI profile runs
:data:`CI_FEATURES`: everything but the divergences found and not fixed yet
(:data:`FOUND_GAPS`), which ``bench/fuzz.py --features all`` also generates.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

# --------------------------------------------------------------------------
# Feature switches.

#: The gaps issue #14 named and fixed: generated in CI too, to keep them fixed.
KNOWN_GAPS = frozenset(
    {
        "null_pk",  # NULL in a non-INTEGER primary key (rowid tables allow it)
        "replace_via_unique",  # INSERT OR REPLACE that removes a row through a UNIQUE column
        "parent_key_repoint",  # a parent's key changed while children point at it
        "fk_enforcement_off",  # PRAGMA foreign_keys=OFF: children before parents, kept orphans
        "autoincrement",  # INTEGER PRIMARY KEY AUTOINCREMENT
        "expr_defaults",  # DEFAULT (expression) / CURRENT_TIMESTAMP in created tables
    }
)
#: Generated and checked everywhere.
BASE_FEATURES = frozenset(
    {
        "hostile_values",  # values the mapping refuses (dead letters expected)
        "hostile_keys",  # key values the mapping refuses
        "without_rowid",
        "foreign_keys",
        "unique",
        "literal_defaults",
        "replace",
        "upsert",
        "key_change",
        "rollback",
        "kill",  # SIGKILL of a daemon process
    }
)
#: Divergences this fuzzer found and that are not fixed yet (tests/integration/
#: test_fuzz_findings.py): off in CI too.
FOUND_GAPS = frozenset(
    {
        # Keys the target cannot hold. The delete that left their dead letters open is
        # fixed (test_fuzz_findings.py); a row ending up missing with no open dead
        # letter under stops at random moments was seen once, not yet shrunk: off in
        # CI until longer runs (bench/fuzz.py --features all) stay clean.
        "hostile_keys",
    }
)
ALL_FEATURES = BASE_FEATURES | KNOWN_GAPS
CI_FEATURES = (BASE_FEATURES | KNOWN_GAPS) - FOUND_GAPS


# --------------------------------------------------------------------------
# Schemas.

# declared type -> value family (how the documented mapping reads it)
DECLARED = {
    "INTEGER": "int",
    "REAL": "real",
    "TEXT": "text",
    "VARCHAR(8)": "varchar8",
    "BOOLEAN": "bool",
    "DATETIME": "ts",
    "JSON": "json",
    "NUMERIC(10,2)": "num",
    "BLOB": "blob",
    "": "any",
}


@dataclass(frozen=True)
class Column:
    name: str
    decl: str
    not_null: bool = False
    unique: bool = False
    default: str | None = None  # SQL text

    @property
    def family(self) -> str:
        return DECLARED[self.decl]


@dataclass(frozen=True)
class Table:
    name: str
    key_style: str  # integer | text | composite | none
    columns: tuple[Column, ...]  # key columns first
    without_rowid: bool = False
    autoincrement: bool = False
    # (fk column, parent table, referenced column or "" for its primary key, ON DELETE action)
    parent: tuple[str, str, str, str] | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return {"integer": ("id",), "text": ("code",), "composite": ("a", "b"), "none": ()}[
            self.key_style
        ]

    @property
    def key_or_rowid(self) -> tuple[str, ...]:
        return self.key or ("rowid",)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def data_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.name not in self.key)


@dataclass(frozen=True)
class Schema:
    tables: tuple[Table, ...]
    fk_enforced: bool

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def children(self, name: str) -> list[Table]:
        return [t for t in self.tables if t.parent and t.parent[1] == name]


def _key_columns(style: str, features: frozenset[str]) -> tuple[Column, ...]:
    if style == "integer":
        return (Column("id", "INTEGER"),)
    if style == "text":
        return (Column("code", "TEXT", not_null="null_pk" not in features),)
    if style == "composite":
        return (Column("a", "INTEGER", not_null=True), Column("b", "TEXT", not_null=True))
    return ()


_LITERAL_DEFAULTS = {"int": "7", "real": "1.5", "text": "'dflt'", "bool": "0", "any": "'d'"}


@st.composite
def tables(draw: st.DrawFn, name: str, features: frozenset[str]) -> Table:
    styles = ["integer", "text", "composite", "none"]
    style = draw(st.sampled_from(styles))
    without_rowid = (
        style in ("text", "composite") and "without_rowid" in features and draw(st.booleans())
    )
    if without_rowid:  # WITHOUT ROWID keys are NOT NULL whatever null_pk says
        features = features - {"null_pk"}
    columns = list(_key_columns(style, features))
    for i in range(draw(st.integers(1, 4))):
        decl = draw(st.sampled_from(sorted(DECLARED)))
        family = DECLARED[decl]
        default = None
        if "literal_defaults" in features and family in _LITERAL_DEFAULTS and draw(st.booleans()):
            default = _LITERAL_DEFAULTS[family]
        if "expr_defaults" in features and family == "ts" and draw(st.booleans()):
            default = "CURRENT_TIMESTAMP"
        unique = "unique" in features and family in ("int", "text") and draw(st.booleans())
        not_null = default is not None or draw(st.integers(0, 4)) == 0
        columns.append(Column(f"c{i}", decl, not_null, unique, default))
    autoincrement = style == "integer" and "autoincrement" in features and draw(st.booleans())
    return Table(name, style, tuple(columns), without_rowid, autoincrement)


@st.composite
def schemas(draw: st.DrawFn, features: frozenset[str]) -> Schema:
    """One to three tables; with foreign keys, the last may be a child of the first."""
    count = draw(st.integers(1, 3))
    made = [draw(tables(f"t{i}", features)) for i in range(count)]
    parent = made[0]
    if count > 1 and "foreign_keys" in features and len(parent.key) == 1 and draw(st.booleans()):
        ref_decl = parent.column(parent.key[0]).decl
        action = draw(st.sampled_from(["NO ACTION", "CASCADE", "SET NULL"]))
        child = made[-1]
        fk = Column("parent_ref", ref_decl)
        made[-1] = Table(
            child.name,
            child.key_style,
            (*child.columns, fk),
            child.without_rowid,
            child.autoincrement,
            parent=("parent_ref", parent.name, draw(st.sampled_from(["", parent.key[0]])), action),
        )
    fk_enforced = not ("fk_enforcement_off" in features and draw(st.booleans()))
    return Schema(tuple(made), fk_enforced)


def create_sql(table: Table) -> str:
    parts = []
    for col in table.columns:
        piece = f'"{col.name}" {col.decl}'.rstrip()
        if table.key_style in ("integer", "text") and col.name == table.key[0]:
            piece += " PRIMARY KEY" + (" AUTOINCREMENT" if table.autoincrement else "")
        if col.not_null:
            piece += " NOT NULL"
        if col.unique:
            piece += " UNIQUE"
        if col.default is not None:
            default = col.default if col.default[0] in "'0123456789" else f"({col.default})"
            piece += f" DEFAULT {default}"
        parts.append(piece)
    if table.key_style == "composite":
        parts.append('PRIMARY KEY ("a", "b")')
    if table.parent:
        column, parent, ref, action = table.parent
        ref = f' ("{ref}")' if ref else ""
        parts.append(f'FOREIGN KEY ("{column}") REFERENCES "{parent}"{ref} ON DELETE {action}')
    tail = " WITHOUT ROWID" if table.without_rowid else ""
    return f'CREATE TABLE "{table.name}" ({", ".join(parts)}){tail}'


# --------------------------------------------------------------------------
# Values.


@dataclass(frozen=True)
class BadText:
    """Text whose bytes are not valid UTF-8 (bound as CAST(? AS TEXT))."""

    raw: bytes


_words = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_json_scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | _words
_json_values = st.recursive(
    _json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_words, kids, max_size=3),
    max_leaves=6,
)
_timestamps = st.builds(
    lambda d, sep, frac, off: d.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + off,
    st.datetimes(datetime(1900, 1, 1), datetime(2100, 1, 1)),
    st.sampled_from(["T", " "]),
    st.sampled_from(["", ".5", ".123456", ".1234560"]),
    st.sampled_from(["", "Z", "+02:00", "-05:30"]),
) | st.sampled_from(["2025-11-12", "2025-11-12T08:15", "2024-02-29 23:59:59.999999"])

CLEAN: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-(2**63), 2**63 - 1),
    "real": st.floats(allow_nan=False) | st.integers(-(2**53), 2**53),
    "text": _words | st.integers(-(10**6), 10**6),
    "varchar8": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
    "bool": st.sampled_from([0, 1, "true", "false", "t", "f"]),
    "ts": _timestamps,
    "json": st.builds(json.dumps, _json_values, ensure_ascii=st.booleans())
    | st.just('{"a": 1, "a": 2}'),
    "num": st.integers(-(10**7), 10**7) | st.sampled_from(["12.50", "-0.01", "99999999.99"]),
    "blob": st.binary(max_size=16) | st.builds(BadText, st.just(b"caf\xc3\xa9 \xff")),
    "any": _words | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False),
}
_bad_utf8 = st.sampled_from(
    [BadText(b"\xff\xfe"), BadText(b"ok \xc3\x28"), BadText(b"\xed\xa0\x80")]
)
_huge = st.builds(lambda n: "é" * n, st.sampled_from([300, 70_000]))
# Edge values: most are refused by the mapping (their rows dead-lettered), some
# (huge text) are not; clean_value decides which, from the stored value.
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "int": st.sampled_from([1.5, "abc", b"\x01", math.inf, "99999999999999999999"]),
    "real": st.sampled_from(["abc", b"\x00\x01", "1e400x"]),
    "text": st.sampled_from(["nul\x00inside", b"\xff\x00"]) | _bad_utf8 | _huge,
    "varchar8": st.sampled_from(["ninechars", "🚀" * 9]) | _bad_utf8,
    "bool": st.sampled_from([2, -1, "maybe", 0.5]),
    "ts": st.sampled_from(
        [
            "2025-02-30 00:00:00",
            "2025-11-12T24:00:00",
            "0000-01-01",
            "2025-11-12T08:15:30.1234567",
            "now",
            "12/11/2025",
            "2025-11-12T08:15:60",
            "9999-12-31T23:59:59-01:00",
            1700000000,
        ]
    ),
    "json": st.sampled_from(['{"a": NaN}', "not json", '"\\u0000"', '["\\ud800"]', "[1,"]),
    "num": st.sampled_from([0.30000000000000004, "abc", 1e20, "1.234", -math.inf]),
    "blob": st.sampled_from([42, 1.5]),
    "any": st.sampled_from(["nul\x00", b"\xff\xfe"]) | _bad_utf8,
}


def values(
    column: Column, features: frozenset[str], *, key: bool = False
) -> st.SearchStrategy[Any]:
    """Values for a column: mostly clean ones, some hostile, and NULL where allowed."""
    clean = CLEAN[column.family]
    if key:  # a small pool, so keys collide (upserts, REPLACE, key changes)
        clean = (
            st.integers(1, 40)
            if column.family == "int"
            else st.sampled_from(["k1", "k2", "k3", "k4", "k5", "K1", "é", "k 1", "10", "1"])
        )
    hostile = "hostile_keys" if key else "hostile_values"
    choices = [clean, clean, clean]
    if hostile in features:
        choices.append(HOSTILE[column.family])
    if not column.not_null and (not key or "null_pk" in features):
        choices.append(st.none())
    return st.one_of(*choices)


def bind(value: Any) -> tuple[str, Any]:
    """(SQL placeholder, parameter) for a generated value."""
    if isinstance(value, BadText):
        return "CAST(? AS TEXT)", value.raw
    return "?", value


# --------------------------------------------------------------------------
# Which stored values the mapping must carry exactly (a row of only such values,
# whose parent is there, may never be dead-lettered).

_CLEAN_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})0*)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)


def _clean_text(v: object) -> bool:
    if not isinstance(v, str) or "\x00" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_ts(v: object) -> bool:
    m = _CLEAN_TS.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g or 0) for g in m.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return 1900 <= year <= 2100


def _clean_json(v: object) -> bool:
    if type(v) is int or (type(v) is float and math.isfinite(v)):
        return True
    if not _clean_text(v) or "\\u0000" in str(v) or "\\ud" in str(v).lower():
        return False

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(str(v), parse_constant=refuse)
    except ValueError:
        return False
    return True


def _clean_num(v: object) -> bool:
    if type(v) is int:
        return abs(v) < 10**8
    if type(v) is float:
        return math.isfinite(v) and re.fullmatch(r"-?\d{1,8}(\.\d{1,2})?", repr(v)) is not None
    return False


_CLEAN_CHECKS = {
    "int": lambda v: type(v) is int,
    "real": lambda v: type(v) is float or (type(v) is int and abs(v) <= 2**53),
    "text": lambda v: type(v) is int or _clean_text(v),
    "varchar8": lambda v: _clean_text(v) and len(v) <= 8,
    "bool": lambda v: v in (0, 1, "true", "false", "t", "f") and type(v) in (int, str),
    "ts": _clean_ts,
    "json": _clean_json,
    "num": _clean_num,
    "blob": lambda v: type(v) in (bytes, str),
    "any": lambda v: type(v) in (int, float) or _clean_text(v),
}


def clean_value(column: Column, value: object) -> bool:
    return value is None or bool(_CLEAN_CHECKS[column.family](value))


def source_connection(path: str, *, foreign_keys: bool) -> sqlite3.Connection:
    """The application's connection: text that is not UTF-8 kept surrogate-escaped."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="surrogateescape")
    conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    return conn
