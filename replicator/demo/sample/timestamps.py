"""Timestamps in the reference app's styles, formatted by hand.

strftime is the single most expensive call when a million rows need three
timestamps each; the app's rows mix API styles (``...Z``, fractions, offsets)
with SQLite's ``datetime('now')`` style, and so do ours.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final

NOW_EPOCH: Final = int(datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC).timestamp())
"""The generator's "now": generated content never depends on the clock."""
DAY: Final = 86_400
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()

TS_API = 0  # 2025-11-12T08:15:30Z        (upstream APIs)
TS_SQL = 1  # 2025-11-12 08:15:30         (datetime('now'))
_TS_API_MS = 2  # 2025-11-12T08:15:30.123Z
_TS_API_US = 3  # 2025-11-12T08:15:30.123456Z
_TS_SQL_MS = 4  # 2025-11-12 08:15:30.123   (strftime('%f'))
_TS_PLUS2 = 5  # 2025-11-12T10:15:30+02:00  (same instant, local time)
_TS_MINUS5 = 6  # 2025-11-12T03:15:30-05:00
# The mix of styles in the app's columns, picked by ``int(random() * 20)``.
API_STYLES: Final = (TS_API,) * 14 + (_TS_API_MS, _TS_API_US, _TS_PLUS2, _TS_MINUS5) + (TS_SQL,) * 2
SQL_STYLES: Final = (TS_SQL,) * 17 + (_TS_SQL_MS, TS_API, TS_API)

_day_strings: dict[int, str] = {}
_MINUTE_SECOND: Final = tuple(f"{m:02d}:{s:02d}" for m in range(60) for s in range(60))


def format_ts(epoch: int, style: int, micros: int) -> str:
    """``epoch`` (seconds, UTC) as text in ``style`` (one of the ``TS_*`` codes)."""
    suffix = ""
    if style == _TS_PLUS2:
        epoch, suffix = epoch + 7200, "+02:00"
    elif style == _TS_MINUS5:
        epoch, suffix = epoch - 18000, "-05:00"
    day, second = divmod(epoch, DAY)
    day_text = _day_strings.get(day)
    if day_text is None:
        day_text = _day_strings[day] = date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
    hour, rest = divmod(second, 3600)
    clock = f"{hour:02d}:{_MINUTE_SECOND[rest]}"
    if style == TS_SQL:
        return f"{day_text} {clock}"
    if style == TS_API:
        return f"{day_text}T{clock}Z"
    if style == _TS_SQL_MS:
        return f"{day_text} {clock}.{micros // 1000:03d}"
    if style == _TS_API_MS:
        return f"{day_text}T{clock}.{micros // 1000:03d}Z"
    if style == _TS_API_US:
        return f"{day_text}T{clock}.{micros:06d}Z"
    return f"{day_text}T{clock}{suffix}"


def utc_now_api() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
