"""The raw-value codec: a SQLite value as a typed description jsonb holds exactly."""

from __future__ import annotations


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
