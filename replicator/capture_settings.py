"""The settings of how changes are followed: capture modes and schema drift.

Part of the configuration model (:mod:`replicator.config` holds the whole and
loads it); kept apart so that each module stays one screenful of concerns.
Each field's ``metadata["doc"]`` is its documentation, as in ``config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    mode: Literal["auto", "triggers", "cursor"] = field(
        default="auto",
        metadata=_doc(
            "Capture mode of tables without their own 'capture' setting: 'triggers', "
            "'cursor', or 'auto' (triggers when the source is writable, else cursor)."
        ),
    )
    lookback_seconds: float = field(
        default=5.0,
        metadata=_doc(
            "Timestamp cursors re-read this many seconds before their position on every "
            "poll, so a row committed late with an older timestamp is still caught."
        ),
    )
    reconcile_interval: float = field(
        default=300.0,
        metadata=_doc(
            "Seconds between the starts of reconciliation passes over cursor tables "
            "(primary-key sets and chunk checksums; finds deletes and silent updates)."
        ),
    )
    reconcile_chunk_rows: int = field(
        default=2000, metadata=_doc("Rows per reconciliation chunk (one key range compared).")
    )
    reconcile_max_chunks: int = field(
        default=20,
        metadata=_doc(
            "Most chunks one reconciliation step compares before the stream gets its turn; "
            "0 runs a whole pass at once."
        ),
    )
    reconcile_checksums: bool = field(
        default=True,
        metadata=_doc(
            "Compare per-chunk checksums of row contents, not only primary keys, and "
            "re-copy rows that differ."
        ),
    )
    null_cursor: Literal["report", "copy"] = field(
        default="report",
        metadata=_doc(
            "Rows whose cursor value is NULL or not a timestamp: 'report' counts and logs "
            "them; 'copy' also re-copies them on every reconciliation pass."
        ),
    )


@dataclass(frozen=True, slots=True)
class SchemaDriftConfig:
    add_columns: bool = field(
        default=True,
        metadata=_doc(
            "A column added to a replicated source table is added to its target table "
            "(type from the documented mapping, the SQLite default filling existing rows), "
            "the triggers are recreated and the table is re-synced, without a restart. "
            "false: the table is paused until the target has the column and the daemon "
            "is restarted."
        ),
    )
    new_tables: bool = field(
        default=True,
        metadata=_doc(
            "A table created in the source while the daemon runs, matching "
            "tables.include/exclude, is planned, snapshotted and streamed without a "
            "restart. false: it is picked up at the next start."
        ),
    )
