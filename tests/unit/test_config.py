"""Configuration: precedence, validation with useful messages, and secrets that never print."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from replicator.config import (
    ColumnConfig,
    Config,
    SnapshotConfig,
    load_config,
)
from replicator.dsn import Secret, redact_dsn, validate_dsn
from replicator.errors import ConfigError

PASSWORD = "Pw-s3cr3t-Xq"


def write(tmp_path: Path, text: str, name: str = "replicator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- precedence


def test_defaults_without_file_env_or_flags() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.source.path is None
    assert config.target.url is None
    assert config.snapshot.chunk_rows == 5000
    assert config.snapshot.on_error == "deadletter"
    assert config.snapshot.create_tables is True
    assert config.target.schema == "public"
    assert config.target.state_schema == "replicator"
    assert config.tables.exclude == ("sqlite_*", "alembic_version", "_replicator_*")


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [source]
        path = "from-file.db"
        busy_timeout_ms = 1234
        [target]
        url = "postgresql://file@127.0.0.1/file"
        [snapshot]
        chunk_rows = 500
        on_error = "stop"
        create_tables = false
        [log]
        level = "warning"
        """,
    )
    file_only = load_config(path, env={})
    assert file_only.source.path == Path("from-file.db")
    assert file_only.source.busy_timeout_ms == 1234
    assert file_only.target.url == Secret("postgresql://file@127.0.0.1/file")
    assert file_only.snapshot == SnapshotConfig(
        chunk_rows=500, on_error="stop", create_tables=False
    )
    assert file_only.log.level == "warning"

    env = {
        "DATABASE_PATH": "/srv/app/var/app.db",
        "DATABASE_URL": "postgresql://env@127.0.0.1/env",
        "REPLICATOR_SNAPSHOT_CHUNK_ROWS": "700",
        "REPLICATOR_SNAPSHOT_CREATE_TABLES": "yes",
        "REPLICATOR_TABLES_EXCLUDE": "sqlite_*, audit_*",
    }
    with_env = load_config(path, env=env)
    assert with_env.source.path == Path("/srv/app/var/app.db")
    assert with_env.require_target() == "postgresql://env@127.0.0.1/env"
    assert with_env.snapshot.chunk_rows == 700
    assert with_env.snapshot.create_tables is True
    assert with_env.snapshot.on_error == "stop"  # not in env: the file still wins
    assert with_env.source.busy_timeout_ms == 1234
    assert with_env.tables.exclude == ("sqlite_*", "audit_*")

    flags = {
        "source.path": "/flag.db",
        "target.url": "postgresql://flag@127.0.0.1/flag",
        "snapshot.chunk_rows": 9,
        "snapshot.on_error": None,  # an unset flag masks nothing
        "log.level": None,
    }
    with_flags = load_config(path, env=env, overrides=flags)
    assert with_flags.require_source() == Path("/flag.db")
    assert with_flags.require_target() == "postgresql://flag@127.0.0.1/flag"
    assert with_flags.snapshot.chunk_rows == 9
    assert with_flags.snapshot.on_error == "stop"
    assert with_flags.log.level == "warning"


def test_replicator_env_overrides_the_app_names_only_where_it_says_so() -> None:
    env = {
        "DATABASE_URL": "postgresql://app@127.0.0.1/app",
        "REPLICATOR_TARGET_URL": "postgresql://override@127.0.0.1/other",
        "REPLICATOR_SOURCE_READONLY": "on",
    }
    config = load_config(None, env=env)
    assert config.require_target() == "postgresql://override@127.0.0.1/other"
    assert config.source.readonly is True


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_PATH", "DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REPLICATOR_SNAPSHOT_CHUNK_ROWS", "321")
    monkeypatch.setenv("DATABASE_PATH", "/from/environ.db")
    config = load_config()
    assert config.snapshot.chunk_rows == 321
    assert config.require_source() == Path("/from/environ.db")


def test_empty_app_variables_and_non_setting_replicator_variables_are_ignored() -> None:
    env = {
        "DATABASE_PATH": "",
        "DATABASE_URL": "",
        "REPLICATOR_CONFIG": "/etc/replicator.toml",
        "REPLICATOR_TEST_DSN": "postgresql://x@y/z",
    }
    config = load_config(None, env=env)
    assert config.source.path is None
    assert config.target.url is None
    with pytest.raises(ConfigError, match="DATABASE_PATH"):
        config.require_source()
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        config.require_target()


def test_per_table_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [table.artifacts]
        target = "artifact"
        [table.artifacts.columns.raw_json]
        type = "jsonb"
        [table.events.columns.ts]
        epoch = "ms"
        """,
    )
    config = load_config(path, env={})
    assert config.table_config("artifacts").target == "artifact"
    assert config.table_config("artifacts").columns["raw_json"] == ColumnConfig(type="jsonb")
    assert config.table_config("events").columns["ts"] == ColumnConfig(epoch="ms")
    assert config.table_config("other").target is None


def test_config_is_frozen() -> None:
    config = load_config(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.snapshot.chunk_rows = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[snapshot]\nchunk_row = 5\n",
            "unknown setting 'snapshot.chunk_row' (did you mean 'chunk_rows'?)",
        ),
        ("[snapshots]\nchunk_rows = 5\n", "unknown section [snapshots]"),
        ("[snapshots]\n", "did you mean 'snapshot'?"),
        ("[target]\nstate_shema = 'x'\n", "did you mean 'state_schema'?"),
        (
            "[table.t]\ntargett = 'x'\n",
            "unknown setting 'table.t.targett' (did you mean 'target'?)",
        ),
        ("[table.t.columns.c]\nepok = 's'\n", "did you mean 'epoch'?"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), env={})
    assert message in str(info.value)


def test_unknown_environment_variable_has_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"REPLICATOR_SNAPSHOT_CHUNK_ROW": "5"})
    assert "REPLICATOR_SNAPSHOT_CHUNK_ROW" in str(info.value)
    assert "did you mean 'REPLICATOR_SNAPSHOT_CHUNK_ROWS'?" in str(info.value)


def test_malformed_toml_names_the_file_and_the_place(tmp_path: Path) -> None:
    path = write(tmp_path, "[snapshot]\nchunk_rows = = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert str(path) in text
    assert "not valid TOML" in text
    assert "line 2" in text


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[snapshot]\nchunk_rows = 'many'\n", {}, "snapshot.chunk_rows: expected a whole number"),
        ("[snapshot]\nchunk_rows = true\n", {}, "snapshot.chunk_rows: expected a whole number"),
        ("[snapshot]\nchunk_rows = -1\n", {}, "must not be negative"),
        ("[snapshot]\nchunk_rows = 0\n", {}, "snapshot.chunk_rows must be at least 1"),
        ("", {"REPLICATOR_SNAPSHOT_CHUNK_ROWS": "20k"}, "expected a whole number, got '20k'"),
        ("[snapshot]\non_error = 'ignore'\n", {}, "'ignore' is not one of 'deadletter', 'stop'"),
        ("[snapshot]\ncreate_tables = 'perhaps'\n", {}, "expected true or false"),
        ("", {"REPLICATOR_SNAPSHOT_CREATE_TABLES": "2"}, "expected true or false"),
        ("[stream]\npoll_interval = 'soon'\n", {}, "stream.poll_interval: expected a number"),
        ("[tables]\nexclude = 'x'\n", {}, None),  # a string is split on commas: accepted
        ("[tables]\ninclude = [1, 2]\n", {}, "expected a list of strings"),
        ("[source]\npath = ''\n", {}, "expected a file path"),
        ("[source]\npath = 3\n", {}, "expected a file path"),
        ("[target]\nurl = 5\n", {}, "expected a connection URL string"),
        ("[target]\nurl = 'mysql://u@h/db'\n", {}, "is not a PostgreSQL URL"),
        ("[target]\nurl = 'postgresql://u@h:5432/db?sslmode=sometimes'\n", {}, None),
        ("[target]\nurl = 'host=h port'\n", {}, "is malformed"),
        ("[target]\nstate_schema = 'public'\n", {}, "must differ from target.schema"),
        ("[metrics]\naddress = 'localhost'\n", {}, "is not host:port"),
        ("[log]\nlevel = 'verbose'\n", {}, "is not one of"),
        ("[table]\nt = 3\n", {}, "table.t: expected a table of settings"),
        ("snapshot = 3\n", {}, "[snapshot] in"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    tmp_path: Path, toml: str, env: dict[str, str], message: str | None
) -> None:
    path = write(tmp_path, toml)
    if message is None:
        load_config(path, env=env)  # accepted as written (checked later by libpq/psycopg)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert message in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_secret_never_prints_its_value() -> None:
    url = f"postgresql://app:{PASSWORD}@db.internal:5432/app"
    secret = Secret(url)
    assert secret.reveal() == url
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret):  # noqa: UP031
        assert PASSWORD not in shown
    assert str(secret) == "postgresql://app:***@db.internal:5432/app"
    assert repr(secret) == "Secret('***')"
    assert secret == Secret(url)
    assert secret != Secret(url + "x")
    assert hash(secret) == hash(Secret(url))
    assert bool(secret) and not bool(Secret(""))


def test_a_whole_config_never_prints_the_password() -> None:
    config = load_config(None, env={"DATABASE_URL": f"postgresql://app:{PASSWORD}@h/app"})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    assert PASSWORD not in repr(config.target)
    assert config.require_target().endswith(f":{PASSWORD}@h/app")


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        (f"postgresql://app:{PASSWORD}@h:5432/db", "postgresql://app:***@h:5432/db"),
        (
            f"postgres://app:{PASSWORD}@h/db?sslmode=require",
            "postgres://app:***@h/db?sslmode=require",
        ),
        ("postgresql://app@h/db", "postgresql://app@h/db"),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=/run/postgresql"),
        (
            f"postgresql://app@h/db?sslmode=require&password={PASSWORD}&application_name=x",
            "postgresql://app@h/db?sslmode=require&password=***&application_name=x",
        ),
        (f"postgresql://h/db?PASSWORD={PASSWORD}", "postgresql://h/db?password=***"),
        (
            f"postgresql://app:{PASSWORD}@h1:5432,h2:5433/db",
            "postgresql://app:***@h1:5432,h2:5433/db",
        ),
        (f"postgresql://:{PASSWORD}@h/db", "postgresql://:***@h/db"),
        (
            f"host=h user=app password={PASSWORD} dbname=db",
            "host=h user=app password=*** dbname=db",
        ),
        (f"host=h password='{PASSWORD} with spaces'", "host=h password=***"),
        ("host=h dbname=db", "host=h dbname=db"),
        (f"host=h password={PASSWORD} port", "<unparseable connection string>"),
        ("", ""),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    shown = redact_dsn(dsn)
    if "=" in redacted and "://" not in redacted:
        # key=value: libpq decides the order; the pairs are what matter
        assert conninfo_to_dict(shown) == conninfo_to_dict(redacted)
    else:
        assert shown == redacted
    assert PASSWORD not in redact_dsn(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        # libpq takes these passwords literally (no percent-encoding needed), so a
        # redaction that splits like urlsplit would show them.
        f"postgresql://app:{PASSWORD}?x@h/db",
        f"postgresql://app:{PASSWORD}#x@h/db",
        f"postgresql://app:{PASSWORD}[x@h/db",
        f"postgresql://app:{PASSWORD}@[::1",  # malformed: must not raise either
        f"postgresql://app:{PASSWORD}@h/db?password={PASSWORD}#frag",
    ],
)
def test_redact_dsn_masks_passwords_libpq_would_use(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert PASSWORD not in shown
    assert shown.startswith("postgresql://app:***@")


def test_malformed_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        validate_dsn(f"postgresql://app:{PASSWORD}@[::1")
    assert "malformed" in str(info.value)
    assert PASSWORD not in str(info.value)


_PASSWORD_CHARS = st.characters(
    codec="utf-8",
    exclude_characters="@/\x00",  # '@' and '/' end the user info in libpq's URI parser
    exclude_categories=("Cs",),
)


@given(st.text(_PASSWORD_CHARS, min_size=1, max_size=30))
@example("?")
@example("#")
@example("]:[")
def test_no_url_password_libpq_would_read_survives_redaction(text: str) -> None:
    password = f"Zq{text}Qz"
    for dsn in (
        f"postgresql://app:{password}@db.example:5432/app",
        f"postgresql://db.example/app?sslmode=prefer&password={quote(password, safe='')}",
    ):
        try:
            parsed = conninfo_to_dict(dsn)
        except Exception:
            parsed = {}
        shown = redact_dsn(dsn)
        if parsed.get("password") == password:
            assert password not in shown
            assert quote(password, safe="") not in shown
        assert "***" in shown or "password" not in parsed


@given(
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=("Cs",)),
        min_size=1,
        max_size=30,
    )
)
def test_no_keyword_password_survives_redaction(text: str) -> None:
    password = f"Zq{text}Qz"
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    dsn = f"host=db.example dbname=app password={quoted}"
    assert conninfo_to_dict(dsn)["password"] == password
    shown = redact_dsn(dsn)
    assert password not in shown
    assert "password=***" in shown
