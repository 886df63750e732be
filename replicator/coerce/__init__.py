"""Value coercion by target PostgreSQL column type.

SQLite stores whatever a row was given; PostgreSQL is strict. Every value on
its way to the target goes through a *converter* built once per column by
:func:`converter_for` from the column's :class:`PgType`. The converter returns
a Python value that psycopg 3 dumps correctly in a text-format ``COPY`` into
that column, or raises :class:`~replicator.errors.CoercionError` with a short
sentence naming the problem and the type. The caller turns that into a
dead-letter record; nothing is ever truncated, rounded or guessed at silently.

Converters sit in the hot path of a bulk copy of millions of rows, so each one
starts with the common case (an exact ``type(v) is ...`` check and a return,
or one C-level call such as ``datetime.fromisoformat``) and leaves the rare
cases to helper functions. No regular expression runs on a hot path.

Inputs are what :mod:`sqlite3` returns: ``None``, ``int`` (int64), ``float``
(SQLite has no NaN), ``str`` (possibly holding lone surrogates U+DC80..U+DCFF:
the reader decodes invalid UTF-8 with ``errors="surrogateescape"``) and
``bytes``. Anything else is refused with a :class:`CoercionError`.

Rules, by target type (``None`` is always ``None``):

smallint / integer / bigint -> ``int``
    ints in range; bools; floats only when integral; numeric text (ASCII,
    stripped, optional sign; ``'42.0'`` and ``'1e3'`` only when integral).
    Out of range is refused with the range named.
numeric(p,s) / numeric -> ``Decimal``
    ints; floats through their shortest ``repr`` (19.99 stays 19.99); numeric
    text. A constrained numeric refuses more decimal places than ``s`` (after
    dropping trailing zeros), more integer digits than ``p - s``, and NaN or
    infinity. Plain numeric takes NaN and +-Infinity (PostgreSQL 14+) and
    refuses only what PostgreSQL cannot store (more than 131072 integer
    digits or 16383 decimal places).
real / double precision -> ``float``
    floats (inf allowed); ints only when exactly representable (2**53 for
    double, 2**24-ish for real); numeric text, including ``nan``/``inf``;
    text that overflows or underflows to zero is refused. ``real`` refuses
    values PostgreSQL would overflow to infinity or underflow to zero; other
    floats are rounded to float4 by PostgreSQL, which is what the column is.
boolean -> ``bool``
    0/1, 0.0/1.0, bools, text true/false/t/f/yes/no/y/n/on/off/1/0 (any case,
    stripped). Nothing else.
text / character varying(n) / character(n) -> ``str``
    str that is valid UTF-8 (no lone surrogates) and has no NUL; ints as
    ``str``; floats as ``repr``; blobs when they are valid UTF-8 without
    NUL. With a length, more characters (code points, as PostgreSQL counts
    them in a UTF8 database) than ``n`` is refused, even trailing spaces.
timestamp [without time zone] -> naive ``datetime`` (UTC wall time)
timestamp with time zone -> aware ``datetime`` in UTC
    ISO-8601 text: ``YYYY-MM-DD`` (midnight), or that followed by ``T``,
    ``t`` or a space and ``HH:MM[:SS[.f]]`` with up to 9 fractional digits
    (``,`` also accepted), then optionally ``Z`` or an offset ``+HH:MM``,
    ``+HHMM`` or ``+HH``. Offsets are converted to UTC; text without one is
    taken as UTC. Fractional digits beyond microseconds must be zeros: they
    are refused otherwise, never rounded. With ``timestamp(p)``, digits
    beyond ``p`` must be zeros too. Numbers are refused unless the column's
    :class:`ColumnRule` gives an ``epoch`` unit (then they are unix time,
    exact to the microsecond or refused). ``infinity``, ``now`` and the like
    are refused.
date -> ``date``
    ``YYYY-MM-DD``, or a timestamp (same rules) that is exactly midnight once
    in UTC; epoch numbers likewise with ``epoch``.
time [without time zone] -> ``time``
    ``HH:MM[:SS[.f]]``; offsets and ``24:00`` are refused.
json / jsonb -> ``str`` (the original text, not re-serialised)
    text that :func:`json.loads` accepts, without NaN/Infinity and valid
    UTF-8; for jsonb also without ``\\u0000`` or unpaired surrogate escapes
    (a walk over the decoded strings, only when the text holds ``\\u0000``,
    ``\\ud`` or ``\\uD``). Ints and finite floats become JSON numbers; blobs
    are decoded as UTF-8 first.
bytea -> ``bytes``
    blobs; text as its UTF-8 bytes with ``surrogateescape``, so text read
    from invalid UTF-8 gets its exact original bytes back. Numbers refused.
uuid -> ``str`` (canonical, lower case)
    text of 32 hex digits with optional braces and hyphens (not leading,
    trailing or doubled); 16-byte blobs.
anything else (arrays, enums, domains, intervals, ...) -> ``str``
    text passes through (PostgreSQL parses it: errors are caught at write
    time), ints and floats as text; blobs refused.

Backstops, where a value this package accepts can still be refused by
PostgreSQL and is then dead-lettered by the sink: the "anything else" types;
jsonb numbers beyond numeric's range (exponents past about +-16000, which
Python's parser reads as 0.0 or inf); constraints (CHECK, domains, keys).

See ``docs/type-mapping.md`` for the same rules as a table and for the
mapping used when the replicator creates a target table itself
(:meth:`PgType.from_sqlite_decl`).
"""

from replicator.coerce.codec import decode_key, encode_raw, json_key, json_safe
from replicator.coerce.common import Converter
from replicator.coerce.convert import converter_for
from replicator.coerce.text import json_valid_converter
from replicator.coerce.types import JSON_KINDS, ColumnRule, Kind, PgType

__all__ = [
    "JSON_KINDS",
    "ColumnRule",
    "Converter",
    "Kind",
    "PgType",
    "converter_for",
    "decode_key",
    "encode_raw",
    "json_key",
    "json_safe",
    "json_valid_converter",
]
