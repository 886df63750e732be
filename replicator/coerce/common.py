"""What every converter family shares: the converter's type, the blanks
PostgreSQL strips, and the wording of the reasons a value is refused."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from replicator.errors import CoercionError

Converter = Callable[[object], object]

_WS = " \t\n\r\f\v"


def _show(v: object) -> str:
    """A short, printable, valid-UTF-8 picture of a value for a reason text."""
    if isinstance(v, bytes | bytearray | memoryview):
        return f"a {len(v)}-byte blob"
    if isinstance(v, str):
        if len(v) > 40:
            return f"{v[:32]!r}... ({len(v)} characters)"
        return repr(v)
    if isinstance(v, bool | int | float | Decimal):
        return str(v) if isinstance(v, Decimal) else repr(v)
    return f"a {type(v).__name__} value"


def _unsupported(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} cannot be converted to {name}")


def _not_utf8(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} is not valid UTF-8, which {name} requires")


def _has_nul(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} contains a NUL character, which {name} cannot hold")


def _checked_unicode(v: str, name: str) -> str:
    """``v`` if PostgreSQL text can hold it: valid UTF-8 and no NUL (non-ASCII case)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _not_utf8(v, name) from None
    if "\x00" in v:
        raise _has_nul(v, name)
    return v


def _checked_text(v: str, name: str) -> str:
    if v.isascii():
        if "\x00" in v:
            raise _has_nul(v, name)
        return v
    return _checked_unicode(v, name)
