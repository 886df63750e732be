"""The raw-value codec: SQLite values as JSON that PostgreSQL's jsonb holds exactly, and back.

Dead letters record the raw value at fault and the row's key; checkpoints and
cursors store keys too. SQLite values JSON cannot hold as they are (blobs,
text with NUL or invalid UTF-8, infinities) are written as a typed
description, which :func:`decode_key` reads back into the original value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any


def encode_raw(value: object) -> dict[str, str]:
    """A JSON-safe, jsonb-safe description of a raw SQLite value for the dead-letter table.

    ``{"type": ..., "value": ...}`` with the value always a string:

    - ``null``: ``""``; ``integer``: decimal digits; ``real``: ``repr`` (``inf``
      and ``-inf`` included);
    - ``text``: the text itself, when it is valid UTF-8 without NUL;
    - ``invalid-utf8-text``: hex of the original bytes (text holding lone
      surrogates, re-encoded with ``surrogateescape``);
    - ``text-with-nul``: hex of the UTF-8 bytes (jsonb cannot hold ``\\u0000``);
    - ``blob``: hex of the bytes.

    Values of any other Python type raise :class:`TypeError`: SQLite returns none.
    """
    if value is None:
        return {"type": "null", "value": ""}
    if isinstance(value, bool):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, int):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        return {"type": "real", "value": repr(float(value))}
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # surrogates that stand for no byte
                raw = value.encode("utf-8", "surrogatepass")
            return {"type": "invalid-utf8-text", "value": raw.hex()}
        if "\x00" in value:
            return {"type": "text-with-nul", "value": value.encode("utf-8").hex()}
        return {"type": "text", "value": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "value": bytes(value).hex()}
    raise TypeError(f"{type(value).__name__} is not a value SQLite returns")


def json_safe(value: object) -> Any:
    """``value`` itself when JSON (and PostgreSQL's jsonb) holds it exactly,
    else its :func:`encode_raw` description (blobs, NUL, invalid UTF-8, inf)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value) and "e+" not in repr(value):
        # Not 1e+20: jsonb stores that as the integer 100000000000000000000, which
        # would come back an int SQLite cannot bind (a snapshot's checkpoint key).
        return value
    if isinstance(value, dict | list):
        return json.loads(json.dumps(value, default=str))  # already JSON-shaped
    if isinstance(value, str) and "\x00" not in value:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return encode_raw(value)
        return value
    return encode_raw(value)


def json_key(values: Sequence[object]) -> list[Any]:
    """A primary key as JSON: plain values where JSON holds them exactly."""
    return [json_safe(v) for v in values]


def decode_key(values: Sequence[Any]) -> tuple[Any, ...]:
    """Undo :func:`json_key`: the raw SQLite values of a stored key."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, dict) and "type" in v:
            kind, body = v["type"], v.get("value", "")
            if kind == "blob":
                out.append(bytes.fromhex(body))
            elif kind in ("invalid-utf8-text", "text-with-nul"):
                out.append(bytes.fromhex(body).decode("utf-8", errors="surrogateescape"))
            elif kind == "real":
                out.append(float(body))
            elif kind == "integer":
                out.append(int(body))
            else:
                out.append(body)
        else:
            out.append(v)
    return tuple(out)
