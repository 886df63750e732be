"""The query file: the application's important queries, in both dialects.

Why a file of its own: the queries that matter are the application's, not
ours, and the team that owns them should be able to read and extend the list
without reading Python. Two formats say the same thing (``docs/queries.md``):

* TOML: a ``[settings]`` table and one ``[[query]]`` table per query, with
  ``sqlite`` and, where the dialects differ, ``postgres`` forms (or ``sql``
  when one text serves both), and ``params``;
* SQL: queries separated by ``-- name:`` comment lines, ``-- param:`` and
  other ``-- key: value`` directives, and a ``-- postgres:`` line that starts
  the PostgreSQL form.

Both forms use ``:name`` placeholders. The SQLite form is run with them as
they are (sqlite3's named style); the PostgreSQL form is rewritten to ``$1,
$2 ...`` (psycopg's raw-query style), so a ``%`` in a LIKE pattern needs no
escaping and a ``::`` cast is never mistaken for a placeholder.

Parameters are lists of example values. Lists of equal length are zipped into
parameter sets; a single value is used in every set. Typed parameters
(``timestamp``, ``date``, ``json`` ...) are given once and handed to each side
the way that side stores the type: see
:func:`replicator.queries.params.side_values`.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.errors import ConfigError
from replicator.queries.params import Param, build_param, did_you_mean
from replicator.queries.sqltext import (
    Dialect,
    clean_sql,
    find_placeholders,
    has_top_level,
    to_postgres_placeholders,
)
from replicator.queries.verdicts import EXTRA_QUERY_KEYS, parse_accept, parse_session

__all__ = [
    "ParamSet",
    "QueryFile",
    "QuerySettings",
    "QuerySpec",
    "load_query_file",
    "parse_sql_file",
    "parse_toml_file",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class QuerySettings:
    """File-wide defaults; each is documented in ``docs/queries.md``."""

    target_p95_ms: float = 100.0
    warmup: int = 3
    runs: int = 100
    max_seconds: float = 20.0
    float_tolerance: float = 1e-9
    large_table_rows: int = 10_000
    statement_timeout_ms: int = 60_000
    settle_timeout: float = 30.0
    rounds: int = 5  # timed runs are split into rounds; each set's p95 is also taken per round
    clients: int = 0  # concurrent clients per side for the load run (0: no load run)
    load_runs: int = 20  # executions per client in the load run

    def with_overrides(self, **values: Any) -> QuerySettings:
        given = {k: v for k, v in values.items() if v is not None}
        return _settings_from({**_settings_dict(self), **given}, "command line")


def _settings_dict(s: QuerySettings) -> dict[str, Any]:
    return {name: getattr(s, name) for name in QuerySettings.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class ParamSet:
    """One execution's values: a dict for sqlite3, a list in ``$n`` order for psycopg."""

    index: int
    sqlite: Mapping[str, object]
    postgres: tuple[object, ...]
    shown: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class QuerySpec:
    name: str
    sqlite_sql: str
    postgres_sql: str  # with $n placeholders
    postgres_text: str  # as written (with :name placeholders), for reports
    postgres_form: bool  # False: the SQLite text is used on both sides
    postgres_order: tuple[str, ...]  # parameter name of $1, $2 ...
    params: tuple[Param, ...]
    ordered: bool
    order_key: tuple[str, ...]
    target_p95_ms: float | None
    description: str = ""
    notes: tuple[str, ...] = ()
    # Verdicts this query accepts (``type_drift``, ``type_drift:<column>``,
    # ``order``, ``vacuous``): shown in the report, but they do not fail it.
    accept: frozenset[str] = frozenset()
    float_tolerance: float | None = None  # this query's own; else the file's

    def param_sets(self) -> list[ParamSet]:
        count = max((len(p) for p in self.params), default=1)
        by_name = {p.name: p for p in self.params}
        out = []
        for i in range(count):

            def pick(values: tuple[object, ...], i: int = i) -> object:
                return values[i] if len(values) > 1 else values[0]

            out.append(
                ParamSet(
                    index=i,
                    sqlite={p.name: pick(p.sqlite_values) for p in self.params},
                    postgres=tuple(pick(by_name[n].postgres_values) for n in self.postgres_order),
                    shown={p.name: pick(p.shown) for p in self.params},
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class QueryFile:
    path: Path
    settings: QuerySettings
    queries: tuple[QuerySpec, ...] = field(default_factory=tuple)
    session: tuple[tuple[str, str], ...] = ()  # PostgreSQL settings (GUC name, value)

    def select(self, names: Sequence[str] | None) -> tuple[QuerySpec, ...]:
        if not names:
            return self.queries
        known = [q.name for q in self.queries]
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"{self.path}: no query named {name!r}{did_you_mean(name, known)}"
                )
        return tuple(q for q in self.queries if q.name in names)


# --------------------------------------------------------------------------- building


def _number(value: object, where: str, *, whole: bool = False, positive: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if whole and not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if value < 0 or (positive and value == 0) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be {'above' if positive else 'at least'} 0")
    return value


_SETTING_RULES: dict[str, tuple[bool, bool]] = {  # name -> (whole, positive)
    "target_p95_ms": (False, True),
    "warmup": (True, False),
    "runs": (True, True),
    "max_seconds": (False, True),
    "float_tolerance": (False, False),
    "large_table_rows": (True, False),
    "statement_timeout_ms": (True, True),
    "settle_timeout": (False, False),
    "rounds": (True, True),
    "clients": (True, False),
    "load_runs": (True, True),
}


def _settings_from(raw: Mapping[str, Any], where: str) -> QuerySettings:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SETTING_RULES:
            raise ConfigError(
                f"{where}: unknown setting {key!r}{did_you_mean(key, list(_SETTING_RULES))}"
            )
        whole, positive = _SETTING_RULES[key]
        number = _number(value, f"{where}: {key}", whole=whole, positive=positive)
        values[key] = number if whole else float(number)
    return QuerySettings(**values)


def build_query(raw: Mapping[str, Any], where: str) -> QuerySpec:
    """A query from its fields (the same for both file formats)."""
    known = [
        "name",
        "description",
        "sql",
        "sqlite",
        "postgres",
        "params",
        "ordered",
        "order_key",
        "target_p95_ms",
        *EXTRA_QUERY_KEYS,
    ]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, known)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}: every query needs a 'name' of letters, digits, '_', '.' or '-'"
        )
    where = f"{where} ({name})"
    if "sql" in raw and ("sqlite" in raw or "postgres" in raw):
        raise ConfigError(f"{where}: 'sql' is one text for both sides; use it alone")
    lite_raw = raw.get("sql", raw.get("sqlite"))
    if not isinstance(lite_raw, str) or not clean_sql(lite_raw):
        raise ConfigError(f"{where}: needs its SQLite form ('sqlite' or 'sql')")
    pg_raw = raw.get("postgres")
    if pg_raw is not None and (not isinstance(pg_raw, str) or not clean_sql(pg_raw)):
        raise ConfigError(f"{where}: 'postgres' must be the PostgreSQL form of the query")
    lite = clean_sql(lite_raw)
    pg_text = clean_sql(pg_raw) if isinstance(pg_raw, str) else lite
    pg_sql, pg_order = to_postgres_placeholders(pg_text)
    lite_names = {n for _, _, n in find_placeholders(lite, "sqlite")}

    params_raw = raw.get("params", {})
    if not isinstance(params_raw, Mapping):
        raise ConfigError(f"{where}: 'params' must be a table of parameter names")
    params = tuple(
        build_param(pname, value, f"{where}: params.{pname}") for pname, value in params_raw.items()
    )
    defined = {p.name for p in params}
    for side, used in (("SQLite", lite_names), ("PostgreSQL", set(pg_order))):
        missing = sorted(used - defined)
        if missing:
            raise ConfigError(
                f"{where}: the {side} form uses :{', :'.join(missing)} but params "
                "gives no value for it"
            )
    unused = sorted(defined - lite_names - set(pg_order))
    if unused:
        raise ConfigError(f"{where}: parameter(s) {', '.join(unused)} used by neither form")
    lengths = {len(p) for p in params if len(p) > 1}
    if len(lengths) > 1:
        detail = ", ".join(f"{p.name}: {len(p)}" for p in params if len(p) > 1)
        raise ConfigError(
            f"{where}: parameter lists are zipped into sets, so those with more than one "
            f"value need the same length ({detail})"
        )

    ordered_raw = raw.get("ordered")
    if ordered_raw is not None and not isinstance(ordered_raw, bool):
        raise ConfigError(f"{where}: 'ordered' must be true or false")
    lite_ordered = has_top_level(lite, "sqlite", "order by")
    pg_ordered = has_top_level(pg_text, "postgres", "order by")
    ordered = lite_ordered if ordered_raw is None else ordered_raw
    order_key_raw = raw.get("order_key", [])
    if isinstance(order_key_raw, str):
        order_key_raw = [k.strip() for k in order_key_raw.split(",") if k.strip()]
    if not isinstance(order_key_raw, list) or not all(isinstance(k, str) for k in order_key_raw):
        raise ConfigError(f"{where}: 'order_key' must be a list of result column names")
    if order_key_raw and not ordered:
        raise ConfigError(f"{where}: 'order_key' needs an ordered query")
    target = raw.get("target_p95_ms")
    if target is not None:
        target = float(_number(target, f"{where}: target_p95_ms", positive=True))
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be text")

    notes = []
    if lite_ordered and not pg_ordered:
        notes.append(
            "the SQLite form has ORDER BY but the PostgreSQL form does not: "
            "PostgreSQL returns rows in whatever order its plan produces"
        )
    for side, text, has_order in (
        ("SQLite", lite, lite_ordered),
        ("PostgreSQL", pg_text, pg_ordered),
    ):
        dialect: Dialect = "sqlite" if side == "SQLite" else "postgres"
        if has_top_level(text, dialect, "limit") and not has_order:
            notes.append(
                f"the {side} form has LIMIT without ORDER BY: which rows come back is "
                "up to each engine's plan"
            )
    return QuerySpec(
        name=name,
        sqlite_sql=lite,
        postgres_sql=pg_sql,
        postgres_text=pg_text,
        postgres_form=pg_raw is not None,
        postgres_order=pg_order,
        params=params,
        ordered=ordered,
        order_key=tuple(order_key_raw),
        target_p95_ms=target,
        description=description.strip(),
        notes=tuple(notes),
        accept=parse_accept(raw.get("accept"), where),
        float_tolerance=_query_tolerance(raw.get("float_tolerance"), where),
    )


def _query_tolerance(value: object, where: str) -> float | None:
    if value is None:
        return None
    return float(_number(value, f"{where}: float_tolerance"))


def _check_unique(queries: Sequence[QuerySpec], path: Path) -> None:
    seen: set[str] = set()
    for q in queries:
        if q.name in seen:
            raise ConfigError(f"{path}: two queries are named {q.name!r}")
        seen.add(q.name)
    if not queries:
        raise ConfigError(f"{path}: holds no queries")


# --------------------------------------------------------------------------- TOML


def parse_toml_file(text: str, path: Path) -> QueryFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"query file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in ("settings", "query", "session"):
            known = ["settings", "query", "session"]
            raise ConfigError(f"{path}: unknown top-level key {key!r}{did_you_mean(key, known)}")
    settings_raw = data.get("settings", {})
    if not isinstance(settings_raw, dict):
        raise ConfigError(f"{path}: [settings] must be a table")
    settings = _settings_from(settings_raw, f"{path}: [settings]")
    raw_queries = data.get("query", [])
    if not isinstance(raw_queries, list):
        raise ConfigError(f"{path}: queries are [[query]] tables")
    queries = tuple(build_query(q, f"{path}: query #{i + 1}") for i, q in enumerate(raw_queries))
    _check_unique(queries, path)
    session = parse_session(data.get("session", {}), f"{path}: [session]")
    return QueryFile(path, settings, queries, session)


# --------------------------------------------------------------------------- SQL


_DIRECTIVE = re.compile(r"^\s*--\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
_QUERY_KEYS = (
    "name",
    "description",
    "param",
    "ordered",
    "order_key",
    "target_p95_ms",
    *EXTRA_QUERY_KEYS,
)
_MARKERS = ("sqlite", "postgres")
_PARAM_HEAD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s+([a-z]+))?\s*=(.*)$", re.DOTALL)


def _toml_value(text: str, where: str) -> Any:
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {text.strip()!r} is not a TOML value ({exc})") from None


def parse_sql_file(text: str, path: Path) -> QueryFile:
    """Queries separated by ``-- name:`` lines; see ``docs/queries.md`` for the directives."""
    settings_raw: dict[str, Any] = {}
    session_raw: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    section = "sqlite"
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{lineno}"
        m = _DIRECTIVE.match(line)
        key = m.group(1).lower() if m else ""
        value = m.group(2).strip() if m else ""
        if m and key == "name":
            current = {"name": value, "params": {}, "sqlite": [], "postgres": [], "line": lineno}
            blocks.append(current)
            section = "sqlite"
            continue
        if current is None:
            if m and key in _SETTING_RULES:
                settings_raw[key] = _toml_value(value, where)
            elif m and key == "session":
                name, _, setting = value.partition("=")
                if not setting.strip():
                    raise ConfigError(f"{where}: expected '-- session: NAME = VALUE'")
                session_raw[name.strip()] = _toml_value(setting, where)
            elif m and difflib.get_close_matches(key, list(_SETTING_RULES), n=1, cutoff=0.85):
                raise ConfigError(
                    f"{where}: unknown setting {key!r}{did_you_mean(key, list(_SETTING_RULES))}"
                )
            elif line.strip() and not line.strip().startswith("--"):
                raise ConfigError(f"{where}: SQL before the first '-- name:' line")
            continue
        if m and key == "session":
            raise ConfigError(f"{where}: '-- session:' lines go before the first '-- name:' line")
        if m and key in _MARKERS:
            if value:
                raise ConfigError(f"{where}: '-- {key}:' stands alone on its line")
            section = key
            current[f"{key}_marked"] = True
            continue
        if m and key in _QUERY_KEYS:
            if key == "param":
                pm = _PARAM_HEAD.match(value)
                if pm is None:
                    raise ConfigError(
                        f"{where}: expected '-- param: NAME [TYPE] = VALUE or [VALUES]'"
                    )
                pname, ptype, pvalue = pm.group(1), pm.group(2), pm.group(3)
                parsed = _toml_value(pvalue, where)
                current["params"][pname] = (
                    {"type": ptype, "values": parsed if isinstance(parsed, list) else [parsed]}
                    if ptype
                    else parsed
                )
            elif key in ("ordered", "target_p95_ms", "float_tolerance"):
                current[key] = _toml_value(value, where)
            elif key == "accept":
                current[key] = [v.strip() for v in value.split(",") if v.strip()]
            elif key == "order_key":
                current[key] = value
            else:
                current[key] = value
            continue
        if m and difflib.get_close_matches(key, [*_QUERY_KEYS, *_MARKERS], n=1, cutoff=0.8):
            known = [*_QUERY_KEYS, *_MARKERS]
            raise ConfigError(f"{where}: unknown directive {key!r}{did_you_mean(key, known)}")
        current[section].append(line)
    queries = []
    for block in blocks:
        raw: dict[str, Any] = {
            k: v
            for k, v in block.items()
            if k not in ("sqlite", "postgres", "line", "sqlite_marked", "postgres_marked")
        }
        raw["sqlite"] = "\n".join(block["sqlite"])
        # A '-- postgres:' line with nothing after it is a form left empty, not
        # "the same text on both sides".
        if block["postgres"] or block.get("postgres_marked"):
            raw["postgres"] = "\n".join(block["postgres"])
        queries.append(build_query(raw, f"{path}:{block['line']}"))
    _check_unique(queries, path)
    settings = _settings_from(settings_raw, f"{path}: settings")
    session = parse_session(session_raw, f"{path}: session")
    return QueryFile(path, settings, tuple(queries), session)


def load_query_file(path: Path) -> QueryFile:
    """Read a ``.toml`` or ``.sql`` query file (by extension), validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"query file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"query file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"query file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return parse_toml_file(text, path)
    if suffix == ".sql":
        return parse_sql_file(text, path)
    raise ConfigError(f"query file {path}: expected a .toml or .sql file")
