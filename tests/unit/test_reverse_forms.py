"""The reverse conversion (replicator/coerce/reverse.py): each SQLite column's form is
learned from its values, and PostgreSQL's values are written back in it exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from replicator.coerce import Kind, PgType
from replicator.coerce.reverse import ColumnForm, TimeText, default_form, detect, to_sqlite
from replicator.errors import CoercionError

TSTZ = PgType.of(Kind.TIMESTAMPTZ)
TS = PgType.of(Kind.TIMESTAMP)
BOOL = PgType.of(Kind.BOOLEAN)
NUM = PgType.of(Kind.NUMERIC)
DOUBLE = PgType.of(Kind.DOUBLE)
MOMENT = datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (["2025-11-12 08:15:30"], "2026-03-04 05:06:07.25"),  # more precise: digits kept
        (["2025-11-12T08:15:30Z"], "2026-03-04T05:06:07.25Z"),
        (["2025-11-12T08:15:30.123Z", "2025-11-12T08:15:30.000Z"], "2026-03-04T05:06:07.250Z"),
        (["2025-11-12 08:15:30.123"], "2026-03-04 05:06:07.250"),
        (["2025-11-12T08:15:30.123456+00:00"], "2026-03-04T05:06:07.250000+00:00"),
        (
            ["2025-11-12T10:15:30+02:00", "2025-11-12T03:15:30-05:00"],
            "2026-03-04T05:06:07.25+00:00",
        ),
        (["2025-11-12"], "2026-03-04"),
    ],
)
def test_a_timestamp_is_written_in_the_style_the_column_holds(
    samples: list[str], expected: str
) -> None:
    assert to_sqlite(TSTZ, detect(Kind.TIMESTAMPTZ, samples), MOMENT) == expected


def test_whole_seconds_follow_the_columns_fraction_and_pythons_isoformat_trims_it() -> None:
    whole = MOMENT.replace(microsecond=0)
    ms = detect(Kind.TIMESTAMPTZ, ["2025-11-12T08:15:30.123Z"])
    assert to_sqlite(TSTZ, ms, whole) == "2026-03-04T05:06:07.000Z"
    iso = detect(Kind.TIMESTAMP, ["2025-11-12T08:15:30.123456", "2025-11-12T08:15:31"])
    assert iso.time_text == TimeText("T", (0, 6), "", False)
    assert to_sqlite(TS, iso, whole.replace(tzinfo=None)) == "2026-03-04T05:06:07"
    assert to_sqlite(TS, iso, MOMENT.replace(tzinfo=None)) == "2026-03-04T05:06:07.250000"


def test_a_column_mixing_fraction_lengths_gets_the_shortest_that_holds_the_value() -> None:
    mixed = detect(
        Kind.TIMESTAMPTZ,
        ["2025-11-12T08:15:30Z", "2025-11-12T08:15:30.123Z", "2025-11-12T08:15:30.123456Z"],
    )
    assert to_sqlite(TSTZ, mixed, MOMENT) == "2026-03-04T05:06:07.250Z"
    assert to_sqlite(TSTZ, mixed, MOMENT.replace(microsecond=0)) == "2026-03-04T05:06:07Z"
    assert to_sqlite(TSTZ, mixed, MOMENT.replace(microsecond=1)) == "2026-03-04T05:06:07.000001Z"


def test_an_aware_timestamp_in_another_zone_is_written_as_the_same_instant_in_utc() -> None:
    plus2 = MOMENT.astimezone(timezone(timedelta(hours=2)))
    form = detect(Kind.TIMESTAMPTZ, ["2025-11-12 08:15:30"])
    assert to_sqlite(TSTZ, form, plus2) == "2026-03-04 05:06:07.25"


def test_epoch_numbers_stay_numbers_in_their_unit() -> None:
    seconds = detect(Kind.TIMESTAMPTZ, [1_700_000_000])
    millis = detect(Kind.TIMESTAMPTZ, [1_700_000_000_123])
    whole = MOMENT.replace(microsecond=0)
    assert to_sqlite(TSTZ, seconds, whole) == int(whole.timestamp())
    assert to_sqlite(TSTZ, millis, MOMENT) == int(whole.timestamp()) * 1000 + 250


@pytest.mark.parametrize(
    ("samples", "true", "false"),
    [
        ([1, 0, 1], 1, 0),
        (["true", "false"], "true", "false"),
        (["t", "f", "t"], "t", "f"),
        (["TRUE"], "TRUE", "FALSE"),
        ([], 1, 0),
    ],
)
def test_a_boolean_is_written_as_the_column_spells_it(
    samples: list[object], true: object, false: object
) -> None:
    form = detect(Kind.BOOLEAN, samples)
    assert (to_sqlite(BOOL, form, True), to_sqlite(BOOL, form, False)) == (true, false)


def test_numerics_have_no_spurious_digits_and_keep_the_columns_storage_class() -> None:
    real = detect(Kind.NUMERIC, [12.5, 3.25])
    text = detect(Kind.NUMERIC, ["12.50"])
    integer = detect(Kind.NUMERIC, [100, 7])
    assert to_sqlite(NUM, real, Decimal("19.99")) == 19.99
    assert repr(to_sqlite(NUM, real, Decimal("19.99"))) == "19.99"
    assert to_sqlite(NUM, text, Decimal("19.90")) == "19.90"
    assert to_sqlite(NUM, integer, Decimal("7.00")) == 7
    assert type(to_sqlite(NUM, integer, Decimal("7.00"))) is int
    assert to_sqlite(NUM, integer, Decimal("7.5")) == 7.5
    assert to_sqlite(DOUBLE, real, 0.1) == 0.1


def test_nan_is_refused_rather_than_stored_as_null() -> None:
    with pytest.raises(CoercionError, match="NaN"):
        to_sqlite(DOUBLE, ColumnForm("real"), float("nan"))


def test_columns_with_no_values_take_sqlites_own_forms() -> None:
    assert default_form(Kind.TIMESTAMPTZ, "NUMERIC").time_text == TimeText()
    assert (
        to_sqlite(TSTZ, default_form(Kind.TIMESTAMPTZ, "NUMERIC"), MOMENT.replace(microsecond=0))
        == "2026-03-04 05:06:07"
    )
    assert to_sqlite(
        PgType.of(Kind.DATE), default_form(Kind.DATE, "NUMERIC"), date(2026, 3, 4)
    ) == ("2026-03-04")
    assert to_sqlite(PgType.of(Kind.TIME), ColumnForm(), time(8, 15)) == "08:15:00"
    assert to_sqlite(PgType.of(Kind.TEXT), default_form(Kind.TEXT, "TEXT"), "x") == "x"
    assert to_sqlite(PgType.of(Kind.BYTEA), ColumnForm(), b"\x00\x01") == b"\x00\x01"
