"""Converters into the text-like types: text, character varying(n),
character(n) and every type not otherwise known (passed as text), json and
jsonb, bytea and uuid."""

from __future__ import annotations

import json
import math

from replicator.coerce.common import (
    _WS,
    Converter,
    _checked_text,
    _checked_unicode,
    _has_nul,
    _not_utf8,
    _show,
    _unsupported,
)
from replicator.coerce.types import JSON_KINDS, Kind, PgType
from replicator.errors import CoercionError

# --------------------------------------------------------------------------- text


def _too_long(v: str, name: str) -> CoercionError:
    return CoercionError(f"{len(v)} characters do not fit {name}")


def _text_slow(v: object, name: str, limit: int | None, *, blobs: bool) -> str:
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, int):
        s = str(int(v))
    elif isinstance(v, float):
        s = repr(float(v))
    elif isinstance(v, str):
        s = str(v)
        s = _checked_text(s, name)
    elif isinstance(v, bytes | bytearray | memoryview) and blobs:
        try:
            s = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise CoercionError(
                f"{_show(v)} is not valid UTF-8 text, which {name} requires"
            ) from None
        if "\x00" in s:
            raise CoercionError(f"{_show(v)} contains a NUL byte, which {name} cannot hold")
    elif isinstance(v, bytes | bytearray | memoryview):
        raise CoercionError(f"{_show(v)} cannot be converted to {name}; only text passes through")
    else:
        raise _unsupported(v, name)
    if limit is not None and len(s) > limit:
        raise _too_long(s, name)
    return s


def _text_converter(t: PgType) -> Converter:
    name = t.name
    limit = t.length if t.kind in (Kind.VARCHAR, Kind.CHAR) else None
    blobs = t.kind is not Kind.OTHER
    if limit is None:

        def convert(v: object) -> object:
            if type(v) is str:
                if v.isascii():
                    if "\x00" in v:
                        raise _has_nul(v, name)
                    return v
                return _checked_unicode(v, name)
            if v is None:
                return None
            return _text_slow(v, name, None, blobs=blobs)

        return convert

    n = limit

    def convert_limited(v: object) -> object:
        if type(v) is str:
            if len(v) > n:
                raise _too_long(v, name)
            if v.isascii():
                if "\x00" in v:
                    raise _has_nul(v, name)
                return v
            return _checked_unicode(v, name)
        if v is None:
            return None
        return _text_slow(v, name, n, blobs=blobs)

    return convert_limited


# --------------------------------------------------------------------------- json

_JSON_CONSTANT_MESSAGE = "NaN and Infinity are not JSON values"


def _refuse_constant(token: str) -> object:
    raise ValueError(_JSON_CONSTANT_MESSAGE)


_json_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def _jsonb_escape_problem(obj: object) -> str | None:
    """Why jsonb would refuse the decoded strings (NUL, unpaired surrogates), if it would."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif isinstance(o, str):
            if "\x00" in o:
                return "holds \\u0000, which jsonb refuses"
            if not o.isascii():
                try:
                    o.encode("utf-8")
                except UnicodeEncodeError:
                    return "holds an unpaired surrogate escape, which jsonb refuses"
    return None


def _json_converters(t: PgType) -> tuple[Converter, Converter]:
    """Into json or jsonb: the converter, and its twin for text known to be valid JSON."""
    name = t.name
    strict = t.kind is Kind.JSONB

    def check(v: str, shown: object) -> str:
        try:
            obj = _json_decode(v)
        except ValueError as exc:
            raise CoercionError(f"{_show(shown)} is not valid JSON ({exc}) for {name}") from None
        except RecursionError:
            raise CoercionError(f"{_show(shown)} is JSON nested too deeply for {name}") from None
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _not_utf8(shown, name) from None
        if strict and "\\u" in v and ("\\u0000" in v or "\\ud" in v or "\\uD" in v):
            problem = _jsonb_escape_problem(obj)
            if problem is not None:
                raise CoercionError(f"{_show(shown)} {problem}")
        return v

    def slow(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(int(v))
        if isinstance(v, float):
            if math.isfinite(v):
                return repr(float(v))
            raise CoercionError(f"{_show(v)} cannot be written as JSON for {name}")
        if isinstance(v, str):
            return check(str(v), v)
        if isinstance(v, bytes | bytearray | memoryview):
            try:
                text = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise CoercionError(f"{_show(v)} is not valid UTF-8 JSON for {name}") from None
            return check(text, v)
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is str:
            return check(v, v)
        if v is None:
            return None
        return slow(v)

    def convert_valid(v: object) -> object:
        # Text SQLite's json_valid() accepted: not parsed again here. What
        # PostgreSQL refuses all the same (its rules are its own) fails that row
        # of the COPY, which is then dead-lettered with PostgreSQL's reason.
        if type(v) is not str:
            return convert(v)
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _not_utf8(v, name) from None
        if "\x00" in v:  # SQLite's checks end at a NUL: what follows was not checked
            return check(v, v)
        if strict and "\\u" in v and ("\\u0000" in v or "\\ud" in v or "\\uD" in v):
            return check(v, v)
        return v

    return convert, convert_valid


def _json_converter(t: PgType) -> Converter:
    return _json_converters(t)[0]


def json_valid_converter(t: PgType) -> Converter | None:
    """For a json or jsonb column: the conversion of a value the source has already
    found to be valid JSON text (SQLite's ``json_valid()``, in C, a fraction of the
    cost of parsing it again in Python); None for a column of another type."""
    if t.kind not in JSON_KINDS:
        return None
    return _json_converters(t)[1]


# --------------------------------------------------------------------------- bytea, uuid


def _bytea_converter(t: PgType) -> Converter:
    name = t.name

    def slow(v: object) -> bytes:
        if isinstance(v, str):
            try:
                return str(v).encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise CoercionError(
                    f"{_show(v)} holds a surrogate that stands for no byte, so it is not {name}"
                ) from None
        if isinstance(v, bytes | bytearray | memoryview):
            return bytes(v)
        if isinstance(v, int | float):
            raise CoercionError(f"{_show(v)} is a number, not binary data for {name}")
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is bytes:
            return v
        if v is None:
            return None
        return slow(v)

    return convert


_HEX = frozenset("0123456789abcdefABCDEF")
_fromhex = bytes.fromhex


def _uuid_text(v: str, name: str) -> str:
    s = v.strip(_WS)
    if s[:1] == "{" and s[-1:] == "}":
        s = s[1:-1]
    h = s.replace("-", "")
    if len(h) == 32 and _HEX.issuperset(h) and s[:1] != "-" and s[-1:] != "-" and "--" not in s:
        h = h.lower()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    raise CoercionError(f"{_show(v)} is not a UUID, which {name} requires")


def _uuid_converter(t: PgType) -> Converter:
    name = t.name

    def slow(v: object) -> str:
        if isinstance(v, str):
            return _uuid_text(str(v), name)
        if isinstance(v, bytes | bytearray | memoryview):
            b = bytes(v)
            if len(b) == 16:
                h = b.hex()
                return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            raise CoercionError(f"{_show(v)} is not a UUID (16 bytes), which {name} requires")
        if isinstance(v, int | float):
            raise CoercionError(f"{_show(v)} is a number, not a UUID, which {name} requires")
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is str:
            if len(v) == 36 and v[8] == v[13] == v[18] == v[23] == "-":
                try:
                    # 16 bytes from 32 characters: exactly 32 hex digits, no blanks.
                    if len(_fromhex(v.replace("-", ""))) == 16:
                        return v.lower()
                except ValueError:
                    pass
            return _uuid_text(v, name)
        if v is None:
            return None
        return slow(v)

    return convert
