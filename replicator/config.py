"""Configuration: parsed and validated once at start-up into a frozen object.

Precedence, lowest first: built-in defaults -> TOML file -> environment
(``DATABASE_PATH``, ``DATABASE_URL``, then ``REPLICATOR_<SECTION>_<KEY>``) ->
command-line flags. The dataclasses below are the single source of truth:
each field's ``metadata["doc"]`` is its documentation, the loader validates
against them, and ``docs/configuration.md`` is checked against them by a test.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from replicator.capture_settings import CaptureConfig, SchemaDriftConfig, _doc
from replicator.dsn import Secret, validate_dsn
from replicator.errors import ConfigError

__all__ = ["CaptureConfig", "Config", "SchemaDriftConfig", "load_config", "parse_address"]


@dataclass(frozen=True, slots=True)
class SourceConfig:
    path: Path | None = field(
        default=None,
        metadata=_doc("The application's SQLite database file. Env: DATABASE_PATH."),
    )
    busy_timeout_ms: int = field(
        default=5000,
        metadata=_doc("How long a SQLite statement waits for a lock before failing (ms)."),
    )
    readonly: bool = field(
        default=False,
        metadata=_doc(
            "Open the source strictly read-only (SQLite mode=ro). Implied by cursor capture."
        ),
    )


@dataclass(frozen=True, slots=True)
class TargetConfig:
    url: Secret | None = field(
        default=None,
        metadata=_doc("PostgreSQL connection URL of the target. Env: DATABASE_URL."),
    )
    schema: str = field(
        default="public", metadata=_doc("Schema in PostgreSQL that holds the replicated tables.")
    )
    state_schema: str = field(
        default="replicator",
        metadata=_doc(
            "Schema holding the replicator's own state (positions, progress, dead letters) "
            "and its migration history; never the application's."
        ),
    )
    connect_timeout: int = field(
        default=10, metadata=_doc("Seconds to wait for a PostgreSQL connection.")
    )


@dataclass(frozen=True, slots=True)
class TablesConfig:
    include: tuple[str, ...] = field(
        default=("*",), metadata=_doc("Glob patterns of source tables to replicate.")
    )
    exclude: tuple[str, ...] = field(
        default=("sqlite_*", "alembic_version", "_replicator_*"),
        metadata=_doc(
            "Glob patterns of source tables never replicated. sqlite_* are SQLite's "
            "internal tables; alembic_version is excluded because the target's own "
            "migration history must survive; _replicator_* are our change log."
        ),
    )


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    chunk_rows: int = field(
        default=5000,
        metadata=_doc(
            "Rows per snapshot chunk; each chunk is one short SQLite read and one "
            "PostgreSQL transaction with its checkpoint."
        ),
    )
    chunk_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_doc(
            "Most memory the rows of one snapshot chunk take as read, estimated from "
            "the chunk before it (the first chunk of a table or range holds at most 256 "
            "rows): a table of wide rows is copied in chunks of fewer than chunk_rows "
            "rows. Each range being copied holds up to three chunks at once (as read and "
            "as converted), so memory is about 3 x chunk_bytes x parallel_tables plus "
            "the process itself. 0: chunk_rows alone."
        ),
    )
    on_error: Literal["deadletter", "stop"] = field(
        default="deadletter",
        metadata=_doc(
            "What a value that cannot be written does: 'deadletter' records the row in "
            "the dead-letter table and goes on; 'stop' makes it fatal."
        ),
    )
    create_tables: bool = field(
        default=True,
        metadata=_doc("Create target tables that do not exist, using the documented mapping."),
    )
    defer_indexes: bool = field(
        default=False,
        metadata=_doc(
            "Into an existing table that is empty when its copy starts: drop its secondary "
            "indexes for the copy and build them again once the table is copied, as "
            "pgloader's 'drop indexes' does. Primary keys, unique and foreign-key "
            "constraints stay (they still check every row). The definitions are kept in the "
            "state schema until rebuilt, so a copy killed meanwhile rebuilds them on its "
            "next run."
        ),
    )
    sql_conversion: bool = field(
        default=True,
        metadata=_doc(
            "Into an empty table, SQLite writes the COPY text of the values it converts "
            "exactly (docs/type-mapping.md), Python the rest; false: Python converts all."
        ),
    )
    parallel_tables: int = field(
        default=2,
        metadata=_doc(
            "Tables copied at the same time, each over its own SQLite and PostgreSQL "
            "connection. A table whose existing target table has foreign keys waits for "
            "its parent tables. 1 copies one table after another."
        ),
    )
    split_rows: int = field(
        default=200_000,
        metadata=_doc(
            "A table with at least this many rows is copied as several primary-key "
            "ranges at once (up to parallel_tables, at least this many rows each), so "
            "that one large table does not leave the other connections idle. Each "
            "range keeps its own checkpoint. A table whose existing target has a "
            "foreign key to itself is not split. 0 never splits a table."
        ),
    )


@dataclass(frozen=True, slots=True)
class StreamConfig:
    batch_max_changes: int = field(
        default=10000, metadata=_doc("Most change-log entries applied in one transaction.")
    )
    batch_max_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata=_doc("Most bytes of row images read into one batch."),
    )
    poll_interval: float = field(
        default=1.0,
        metadata=_doc("Seconds between polls when no file-change event arrives."),
    )
    watch: bool = field(
        default=True,
        metadata=_doc("Wake on file-change events for the SQLite file and its -wal (watchfiles)."),
    )
    prune_batch: int = field(
        default=5000,
        metadata=_doc("Most change-log rows deleted per SQLite write transaction when pruning."),
    )
    shutdown_timeout: float = field(
        default=30.0,
        metadata=_doc("Seconds a graceful shutdown may take to finish the batch in hand."),
    )
    verify_keep_seconds: float = field(
        default=86400.0,
        metadata=_doc("Seconds the log is kept after an identical verify, for verify --changed."),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = field(
        default="127.0.0.1:9479",
        metadata=_doc("host:port of the metrics and health HTTP server; empty to disable."),
    )
    lag_ready_seconds: float = field(
        default=5.0,
        metadata=_doc("Lag under which /readyz reports ready (the cutover signal)."),
    )
    ready_max_dead_letters: int = field(
        default=0,
        metadata=_doc(
            "Open dead letters /readyz tolerates: with more, it answers 503 (those rows "
            "are not in the target as the source has them)."
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=_doc("Lowest log level written.")
    )
    format: Literal["auto", "json", "console"] = field(
        default="auto",
        metadata=_doc("'auto': readable on a terminal, JSON lines otherwise."),
    )


@dataclass(frozen=True, slots=True)
class ColumnConfig:
    type: str | None = field(
        default=None,
        metadata=_doc(
            "Target type for this column when the replicator creates the table "
            "(e.g. 'jsonb' for a TEXT column holding JSON)."
        ),
    )
    epoch: Literal["s", "ms", "us"] | None = field(
        default=None,
        metadata=_doc("Numbers in this timestamp column are unix epoch in this unit."),
    )


@dataclass(frozen=True, slots=True)
class TableConfig:
    target: str | None = field(
        default=None, metadata=_doc("Target table name when it differs from the source's.")
    )
    columns: Mapping[str, ColumnConfig] = field(
        default_factory=dict, metadata=_doc("Per-column options, keyed by source column name.")
    )
    conflict: Literal["source_wins", "newer_wins"] = field(
        default="source_wins",
        metadata=_doc(
            "Dual-write safety: 'source_wins' applies every replicated change; 'newer_wins' "
            "updates a row only when the incoming version_column is not older than the "
            "target's, so a newer write made directly in PostgreSQL survives."
        ),
    )
    version_column: str | None = field(
        default=None,
        metadata=_doc("Version or timestamp column compared by conflict = 'newer_wins'."),
    )
    capture: Literal["triggers", "cursor"] | None = field(
        default=None,
        metadata=_doc(
            "How changes of this table are captured: 'triggers' (every change, needs a "
            "writable source) or 'cursor' (polls a cursor column read-only; deletes and "
            "silent updates are found by reconciliation). Unset: capture.mode."
        ),
    )
    cursor: str | None = field(
        default=None,
        metadata=_doc(
            "The cursor column of a cursor-mode table: 'rowid' (or the INTEGER PRIMARY KEY) "
            "for append-only tables, or a timestamp column such as 'updated_at'. Unset: "
            "chosen automatically (an indexed updated_at-like column, else the rowid)."
        ),
    )


SECTIONS: dict[str, type[Any]] = {
    "source": SourceConfig,
    "target": TargetConfig,
    "tables": TablesConfig,
    "snapshot": SnapshotConfig,
    "stream": StreamConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "capture": CaptureConfig,
    "schema_drift": SchemaDriftConfig,
}


@dataclass(frozen=True, slots=True)
class Config:
    source: SourceConfig = SourceConfig()
    target: TargetConfig = TargetConfig()
    tables: TablesConfig = TablesConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    stream: StreamConfig = StreamConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    schema_drift: SchemaDriftConfig = field(default_factory=SchemaDriftConfig)
    table: Mapping[str, TableConfig] = field(default_factory=dict)

    def table_config(self, name: str) -> TableConfig:
        return self.table.get(name, TableConfig())

    def require_source(self) -> Path:
        if self.source.path is None:
            raise ConfigError("no source database: set DATABASE_PATH, [source] path, or --source")
        return self.source.path

    def require_target(self) -> str:
        if self.target.url is None:
            raise ConfigError("no target database: set DATABASE_URL, [target] url, or --target")
        return self.target.url.reveal()


def env_name(section: str, key: str) -> str:
    return f"REPLICATOR_{section.upper()}_{key.upper()}"


# Names the application already uses, honoured as-is.
APP_ENV = {"DATABASE_PATH": ("source", "path"), "DATABASE_URL": ("target", "url")}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check and convert one raw value (TOML, env text or CLI) to ``hint``."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{where}: {value!r} is not one of {options}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{where}: must not be negative, got {number}")
        return number
    if hint is float:
        try:
            number_f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if number_f < 0:
            raise ConfigError(f"{where}: must not be negative, got {number_f}")
        return number_f
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: expected a file path, got {value!r}")
        return Path(value).expanduser()
    if hint is Secret:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a connection URL string")
        return Secret(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover


def _build_section(cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"unknown setting '{where}.{key}'{_did_you_mean(key, names)}")
        values[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _build_table(name: str, raw: Mapping[str, Any]) -> TableConfig:
    where = f"table.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table of settings")
    known = [f.name for f in dataclasses.fields(TableConfig)]
    hints = _field_types(TableConfig)
    values: dict[str, Any] = {}
    columns: dict[str, ColumnConfig] = {}
    for key, value in raw.items():
        if key in known and key != "columns":
            values[key] = _convert(value, hints[key], f"{where}.{key}")
        elif key == "columns":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.columns: expected a table of columns")
            for col, opts in value.items():
                if not isinstance(opts, Mapping):
                    raise ConfigError(f"{where}.columns.{col}: expected a table of settings")
                columns[col] = _build_section(ColumnConfig, opts, f"{where}.columns.{col}")
        else:
            raise ConfigError(f"unknown setting '{where}.{key}'{_did_you_mean(key, known)}")
    table = TableConfig(**values, columns=columns)
    if table.conflict == "newer_wins" and not table.version_column:
        raise ConfigError(f'{where}: conflict = "newer_wins" needs version_column')
    return table


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, file, environment and flags; validate; return a frozen Config.

    ``overrides`` maps ``"section.key"`` to a value (from CLI flags); ``None``
    values are ignored so that unset flags do not mask the file or env.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    tables_raw: Mapping[str, Any] = {}
    if path is not None:
        data = read_toml(path)
        for section, body in data.items():
            if section == "table":
                if not isinstance(body, Mapping):
                    raise ConfigError("[table] must hold one sub-table per source table")
                tables_raw = body
                continue
            if section not in SECTIONS:
                choices = [*SECTIONS, "table"]
                raise ConfigError(
                    f"unknown section [{section}] in {path}{_did_you_mean(section, choices)}"
                )
            if not isinstance(body, Mapping):
                raise ConfigError(f"[{section}] in {path} must be a table of settings")
            raw[section].update(body)

    for var, (section, key) in APP_ENV.items():
        if env.get(var):
            raw[section][key] = env[var]
    prefix = "REPLICATOR_"
    known_env = {
        env_name(s, f.name): (s, f.name)
        for s, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    for var, value in env.items():
        if (
            not var.startswith(prefix)
            or var in ("REPLICATOR_CONFIG",)
            or var.startswith("REPLICATOR_TEST")
        ):
            continue
        if var not in known_env:
            raise ConfigError(
                f"unknown environment variable {var}{_did_you_mean(var, list(known_env))}"
            )
        section, key = known_env[var]
        raw[section][key] = value

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        raw[section][key] = value

    sections = {name: _build_section(cls, raw[name], name) for name, cls in SECTIONS.items()}
    tables = {name: _build_table(name, body) for name, body in tables_raw.items()}
    config = Config(**sections, table=tables)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    if config.target.url is not None:
        validate_dsn(config.target.url.reveal())
    if config.snapshot.chunk_rows < 1:
        raise ConfigError("snapshot.chunk_rows must be at least 1")
    if config.snapshot.parallel_tables < 1:
        raise ConfigError("snapshot.parallel_tables must be at least 1")
    if config.snapshot.chunk_bytes < 0:
        raise ConfigError("snapshot.chunk_bytes must be 0 (no limit) or more")
    if config.snapshot.split_rows < 0:
        raise ConfigError("snapshot.split_rows must be 0 (never split) or more")
    if config.stream.batch_max_changes < 1:
        raise ConfigError("stream.batch_max_changes must be at least 1")
    if config.metrics.address:
        parse_address(config.metrics.address)
    for name in (config.target.schema, config.target.state_schema):
        if not name or "\x00" in name:
            raise ConfigError(f"schema name {name!r} is not a valid identifier")
    if config.capture.reconcile_chunk_rows < 1:
        raise ConfigError("capture.reconcile_chunk_rows must be at least 1")
    if config.target.schema == config.target.state_schema:
        raise ConfigError(
            "target.state_schema must differ from target.schema: the replicator's state "
            "must not mix with the application's tables"
        )


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics.address {address!r} is not host:port")
    return (host.strip("[]") or "127.0.0.1"), int(port)
