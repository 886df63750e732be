"""Planted bad cells: values the stricter PostgreSQL target has to refuse.

Which column of which table gets what. Never a key column, and rows that get
one are generated without children, so every refused row is exactly one dead
letter and "rows in PostgreSQL + dead letters == rows in SQLite" holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

BAD_ROW_FRACTION: Final[float] = 0.002


class BadKind(StrEnum):
    """Why PostgreSQL refuses a cell (values compare equal to their strings)."""

    TOO_LONG = "too_long"
    BAD_JSON = "bad_json"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_BOOLEAN = "bad_boolean"
    NOT_INTEGER = "not_integer"
    INT_OUT_OF_RANGE = "int_out_of_range"
    NUL_CHARACTER = "nul_character"


@dataclass(frozen=True, slots=True)
class BadCell:
    """One planted cell the target must refuse; ``key`` is the row's primary key."""

    table: str
    key: tuple[object, ...]
    column: str
    value: object
    kind: BadKind


_LONG_URL: Final = "https://arxiv.org/abs/2511.01234?utm_source=" + "x" * 2048


@dataclass(frozen=True, slots=True)
class _BadSpec:
    column: str
    kind: BadKind
    values: tuple[object, ...]


_TOO_BIG_INTS: Final = (2**31, -(2**31) - 1, 2**63 - 1)
_BAD_TIMESTAMPS: Final = ("2025-13-45 99:00:00", "2025-02-30T10:00:00Z", "next tuesday")
_NOT_INTEGERS: Final = ("n/a", "unknown")
BAD_SPECS: Final[Mapping[str, tuple[_BadSpec, ...]]] = {
    "artifacts": (
        _BadSpec("url", BadKind.TOO_LONG, (_LONG_URL,)),
        _BadSpec(
            "raw_json",
            BadKind.BAD_JSON,
            ('{"id": "2511.01234", "title": "Sparse attention at sc', "{'id': '2511.01234'}"),
        ),
        _BadSpec("published_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
        _BadSpec("title", BadKind.NUL_CHARACTER, ("Sparse attention\x00 revisited",)),
        _BadSpec("author_entity_ids", BadKind.BAD_JSON, ("[101, 202,",)),
        _BadSpec("updated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS[::-1]),
    ),
    "artifact_classifications": (
        _BadSpec("raw_json", BadKind.BAD_JSON, ('{"model": "gpt-4o-mini", "tags": [,]}',)),
        _BadSpec("urgency", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("urgency", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("reasoning", BadKind.NUL_CHARACTER, ("Relevant\x00 to agents.",)),
        _BadSpec(
            "category",
            BadKind.TOO_LONG,
            ("LLM agents / tool use / evaluation harnesses / benchmark contamination analysis",),
        ),
        _BadSpec("tags", BadKind.BAD_JSON, ("['llm', 'agents']",)),
    ),
    "artifact_scores": (_BadSpec("computed_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),),
    "discovery_labels": (
        _BadSpec("label", BadKind.TOO_LONG, ("relevant-but-needs-domain-expert-review",)),
        _BadSpec("notes", BadKind.NUL_CHARACTER, ("see thread\x00",)),
        _BadSpec("created_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "tweets": (
        _BadSpec(
            "author_username", BadKind.TOO_LONG, ("the_real_" + "research_signal_" * 5, "研究" * 33)
        ),
        _BadSpec("retweet_count", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("reply_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("tags", BadKind.BAD_JSON, ('["llm", "agents"',)),
        _BadSpec("created_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
        _BadSpec("text", BadKind.NUL_CHARACTER, ("gm\x00 frens 🚀",)),
        _BadSpec("lang", BadKind.TOO_LONG, ("en-US-x-twitter",)),
        _BadSpec("quote_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS[::-1]),
    ),
    "experiments": (
        _BadSpec("scoring_weights", BadKind.BAD_JSON, ('{"novelty": 0.4, "emergence": 0.6,}',)),
    ),
    "experiment_runs": (
        _BadSpec("artifact_count", BadKind.INT_OUT_OF_RANGE, _TOO_BIG_INTS),
        _BadSpec("true_positives", BadKind.NOT_INTEGER, _NOT_INTEGERS),
        _BadSpec("metadata", BadKind.BAD_JSON, ('{"git_sha": "3f2a9c1", "seed": 7',)),
        _BadSpec("started_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "snapshots": (
        _BadSpec("meta", BadKind.BAD_JSON, ("{tables: 11}",)),
        _BadSpec("checksum", BadKind.TOO_LONG, ("sha512:" + "ab" * 64,)),
    ),
    "beta_users": (
        _BadSpec("is_admin", BadKind.BAD_BOOLEAN, (2, "maybe")),
        _BadSpec("invite_code", BadKind.TOO_LONG, ("INVITE-" + "7F3K9QX2" * 8,)),
        _BadSpec("activated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
    "cursors": (
        _BadSpec("value", BadKind.NUL_CHARACTER, ("eyJwYWdlIjogMn0=\x00",)),
        _BadSpec("updated_at", BadKind.BAD_TIMESTAMP, _BAD_TIMESTAMPS),
    ),
}


def bad_count(rows: int, enabled: bool) -> int:
    """How many of a table's ``rows`` get a bad cell: at least one, unless planting is
    off or the table has a single row (a table with only bad rows proves nothing)."""
    if not enabled or rows <= 1:
        return 0
    return max(1, round(rows * BAD_ROW_FRACTION))
