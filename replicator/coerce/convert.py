"""The dispatch from a column's type (and its configured rule) to its converter."""

from __future__ import annotations

from replicator.coerce.common import Converter
from replicator.coerce.numbers import (
    _INT_RANGES,
    _boolean_converter,
    _double_converter,
    _integer_converter,
    _numeric_converter,
    _real_converter,
)
from replicator.coerce.temporal import (
    _EPOCH_UNITS,
    _date_converter,
    _time_converter,
    _timestamp_converter,
)
from replicator.coerce.text import (
    _bytea_converter,
    _json_converter,
    _text_converter,
    _uuid_converter,
)
from replicator.coerce.types import JSON_KINDS, ColumnRule, Kind, PgType
from replicator.errors import ConfigError

_TEMPORAL_WITH_EPOCH = (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE)
_NO_RULE = ColumnRule()  # numbers in temporal columns refused


def converter_for(t: PgType, rule: ColumnRule = _NO_RULE) -> Converter:
    """The function that turns one SQLite value into one value for a column of type ``t``.

    Raises :class:`~replicator.errors.ConfigError` when ``rule`` does not apply to
    the type (an epoch unit on a column that is not a timestamp or date).
    """
    kind = t.kind
    if rule.epoch is not None:
        if rule.epoch not in _EPOCH_UNITS:
            raise ConfigError(f"epoch must be 's', 'ms' or 'us', not {rule.epoch!r}")
        if kind not in _TEMPORAL_WITH_EPOCH:
            raise ConfigError(f"epoch applies to timestamp and date columns only, not to {t.name}")
    if kind in _INT_RANGES:
        return _integer_converter(t)
    if kind is Kind.NUMERIC:
        return _numeric_converter(t)
    if kind is Kind.DOUBLE:
        return _double_converter(t)
    if kind is Kind.REAL:
        return _real_converter(t)
    if kind is Kind.BOOLEAN:
        return _boolean_converter(t)
    if kind in (Kind.TEXT, Kind.VARCHAR, Kind.CHAR, Kind.OTHER):
        return _text_converter(t)
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return _timestamp_converter(t, rule)
    if kind is Kind.DATE:
        return _date_converter(t, rule)
    if kind is Kind.TIME:
        return _time_converter(t)
    if kind in JSON_KINDS:
        return _json_converter(t)
    if kind is Kind.BYTEA:
        return _bytea_converter(t)
    if kind is Kind.UUID:
        return _uuid_converter(t)
    raise AssertionError(f"unhandled kind {kind!r}")  # pragma: no cover
