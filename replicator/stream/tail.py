"""The daemon's end of the trigger change log: the next batch, and pruning.

During a backlog the next batch is read and converted on a second thread
(:class:`~replicator.source.readahead.ReadAhead`) while the current one is
applied. The same thread deletes applied log rows, without ever making the
application wait: when it holds SQLite's write lock, pruning waits a moment
at most and is left for a later round (WAL readers are not blocked meanwhile).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from psycopg.abc import Transformer

from replicator.config import Config
from replicator.source import changelog
from replicator.source.changelog import Change
from replicator.source.readahead import ReadAhead
from replicator.source.sqlite import open_source
from replicator.stream.apply import Applier
from replicator.stream.batch import Prepared
from replicator.stream.retry import transient_kind

PRUNE_LOCK_WAIT_MS = 50  # pruning waits this long for SQLite's write lock, then tries later
# An idle replicator still tells the source it is alive this often (its consumer
# row's seen_at), so that `status` and `check` only call gone a consumer that is.
TOUCH_EVERY = 60.0


class LogTail:
    def __init__(self, config: Config, path: Path, log: Any) -> None:
        self.config = config
        self.path = path
        self.log = log
        self.writable = True  # the source takes writes (pruning); false in cursor-only mode
        self.readahead: ReadAhead | None = None
        self.pruning_upto = 0  # the position the running prune deletes up to
        self.pruned_upto = 0  # pruned up to here, as far as no other target holds it back
        self.deferred = False  # the last prune found the write lock taken
        self.last_prune = 0.0
        # This target among the source's consumers (replicator/source/consumers.py):
        # set once it is registered; no pruning before. ``confirmed`` is the last
        # position recorded for it there; ``dropped`` that a prune found it unregistered.
        self.consumer: str | None = None
        self.confirmed: int | None = None
        self.dropped = False
        # Log entries after this position are kept for an incremental verify
        # (replicator/state/verifymarks.py); None: nothing to keep.
        self.keep_from: int | None = None
        self.keep_checked = float("-inf")

    def worker(self) -> ReadAhead:
        """The read-ahead and pruning thread. Its connections are opened on the calling
        thread when the source is (so they are to the file the daemon's guard watches)."""
        if self.readahead is None:
            cfg = self.config
            reader = open_source(
                self.path, readonly=True, busy_timeout_ms=cfg.source.busy_timeout_ms
            )
            pruner = (
                open_source(self.path, busy_timeout_ms=PRUNE_LOCK_WAIT_MS)
                if self.writable
                else None
            )
            self.readahead = ReadAhead(
                lambda: reader,
                cfg.stream.batch_max_changes,
                cfg.stream.batch_max_bytes,
                pruner=(lambda: pruner) if pruner is not None else None,
            )
        return self.readahead

    def read_batch(
        self,
        source: sqlite3.Connection,
        after: int,
        version: int | None,
        applier: Applier,
        skip: Mapping[str, int],
        formatter: Transformer | None,
    ) -> tuple[list[Change], Prepared | None]:
        """The batch after ``after``, and its rows converted when that is done already:
        read ahead while the previous batch was applied (during a backlog), or read now."""
        cfg = self.config.stream
        context = (applier, dict(skip))
        found = None
        if self.readahead is not None:
            found = self.readahead.take(after, version, context)
        if found is not None and found[0]:
            changes, prepared = found
        else:  # nothing read ahead, or it found the log's end: read what is there now
            changes = changelog.read_changes(
                source, after, cfg.batch_max_changes, cfg.batch_max_bytes, schema_version=version
            )
            prepared = None
        if changes and len(changes) >= cfg.batch_max_changes // 2:
            # A backlog: read and convert the next batch while this one is applied.
            skipped = dict(skip)  # as it is now: the daemon's may change meanwhile

            def ahead(batch: list[Change]) -> Prepared:
                return applier.prepare(batch, skipped, formatter=formatter)

            self.worker().start(changes[-1].seq, version, context, ahead)
        return changes, prepared

    def pruning(self) -> bool:
        """A prune (a write of ours, which may checkpoint the file) is under way."""
        return self.readahead is not None and self.readahead.pruning()

    def prune_if_due(self, position: int, now: float) -> None:
        """Collect a finished prune; start the next when a second has passed and the
        log holds applied rows, or a minute has (at most one prune runs at a time).

        The log is only pruned below every registered consumer's position, so
        ``pruned_upto`` is the position recorded for this target, not the log's end.
        """
        self.collect()
        due = now - self.last_prune >= 1.0 and self.pruned_upto < position
        due = due or now - self.last_prune >= TOUCH_EVERY
        if due and self.consumer is not None and self.writable and not self.worker().pruning():
            self.last_prune = now
            self.prune(position)

    def prune(self, upto: int) -> None:
        """Delete log rows up to ``upto`` on the worker thread; :meth:`collect` sees
        how it went."""
        batch = self.config.stream.prune_batch
        self.pruning_upto = upto
        consumer = self.consumer
        keep = self.keep_from
        self.worker().prune(lambda conn: changelog.prune(conn, upto, batch, consumer, keep))

    def collect(self) -> None:
        if self.readahead is None:
            return
        try:
            if self.readahead.pruned() is None:
                return  # still running, or none started
        except changelog.NotRegistered:
            # Dropped by an operator: the daemon registers again (stream/setup.py),
            # re-syncing if another target pruned past what this one had read.
            self.dropped = True
            return
        except sqlite3.OperationalError as exc:
            if transient_kind(exc) != "sqlite_busy":
                raise
            if not self.deferred:
                self.log.info(
                    "prune_deferred",
                    reason="the source's write lock is taken",
                    position=self.pruning_upto,
                )
            self.deferred = True
            return
        self.pruned_upto = self.pruning_upto
        if self.consumer is not None:
            self.confirmed = self.pruning_upto
        self.deferred = False

    def close(self, *, release: Callable[[sqlite3.Connection], None] | None = None) -> None:
        if self.readahead is not None:
            self.readahead.close(release=release)
            self.readahead = None
