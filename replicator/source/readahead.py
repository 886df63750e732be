"""The daemon's second thread: the next batch read ahead, and the log pruned.

During a backlog the daemon alternates between two kinds of work: reading,
decoding and converting changes (Python, in this process) and applying them
in PostgreSQL (mostly the server's process: COPY, merge, index upkeep,
commit). Done one after the other, each side idles while the other works.
:class:`ReadAhead` overlaps them: once a full batch is in hand, the next one
is read and prepared on a thread of its own, over a SQLite connection of its
own, while the batch in hand is applied. Pruning the applied part of the log
(a few SQLite write transactions) runs on that thread too: the main loop never
waits for it (a read queued behind a prune does, which only matters in the rare
case that the application holds SQLite's write lock for long).

Correctness does not depend on timing. A batch read ahead is used only when
it starts exactly where the stream stands when it is needed, under the same
source schema version and for an equal ``context`` (the daemon's: the same
applier object, so the same plans, and the same tables skipped); otherwise it is
thrown away and the batch is read again. The log only grows at its end (one
writer; ``seq`` is handed out in commit order), so the changes read after
position P earlier are a prefix of those read after P later: the same
consecutive changes, in order. At most one batch is read ahead, so memory stays
bounded by two batches.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from replicator.source import changelog
from replicator.source.changelog import Change

Prepare = Callable[[list[Change]], Any]


@dataclass(frozen=True, slots=True)
class _Pending:
    after: int
    version: int | None
    context: object
    future: Future[tuple[list[Change], Any]]


class ReadAhead:
    """One batch of the change log read (and prepared) ahead, plus pruning, on one thread.

    ``reader`` opens the thread's read connection, ``pruner`` its write
    connection (each once, on first use, on that thread).
    """

    def __init__(
        self,
        reader: Callable[[], sqlite3.Connection],
        max_changes: int,
        max_bytes: int,
        *,
        pruner: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        self._open_reader = reader
        self._open_pruner = pruner
        self._max_changes = max_changes
        self._max_bytes = max_bytes
        self._conns: dict[str, sqlite3.Connection] = {}  # used on the worker thread only
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        self._pending: _Pending | None = None
        self._pruning: Future[int] | None = None
        self._closed = False
        self.used = 0  # batches taken from the read-ahead (for tests and logs)
        self.wasted = 0  # batches read ahead and thrown away

    def _conn(self, kind: str) -> sqlite3.Connection:
        conn = self._conns.get(kind)
        if conn is None:
            opener = self._open_reader if kind == "read" else self._open_pruner
            assert opener is not None
            conn = self._conns[kind] = opener()
        return conn

    def _read(self, after: int, version: int | None, prepare: Prepare) -> tuple[list[Change], Any]:
        changes = changelog.read_changes(
            self._conn("read"), after, self._max_changes, self._max_bytes, schema_version=version
        )
        return changes, (prepare(changes) if changes else None)

    def start(self, after: int, version: int | None, context: object, prepare: Prepare) -> None:
        """Begin reading the changes after ``after`` and running ``prepare`` on them."""
        self.discard()
        future = self._pool.submit(self._read, after, version, prepare)
        self._pending = _Pending(after, version, context, future)

    def take(
        self, after: int, version: int | None, context: object
    ) -> tuple[list[Change], Any] | None:
        """(changes, what ``prepare`` made of them) if read ahead after ``after`` under
        ``version`` for ``context``; None otherwise.

        Waits for the read to finish. Its errors (a schema change seen by the
        read, a SQLite error) are raised here, as the read in hand would raise them.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if (pending.after, pending.version, pending.context) != (after, version, context):
            self._settle(pending)
            return None
        found = pending.future.result()
        self.used += 1
        return found

    def discard(self) -> None:
        """Forget what was read ahead (waiting for the read in flight to end)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._settle(pending)

    def _settle(self, pending: _Pending) -> None:
        self.wasted += 1
        with contextlib.suppress(Exception):  # a read nobody will use: its error is moot
            pending.future.result()

    # -- pruning ----------------------------------------------------------------

    def prune(self, prune: Callable[[sqlite3.Connection], int]) -> None:
        """Run ``prune`` over the write connection on the thread (after any read
        queued before it). One at a time: see :meth:`pruned`."""
        assert self._pruning is None, "a prune is still running"
        self._pruning = self._pool.submit(lambda: prune(self._conn("prune")))

    def pruning(self) -> bool:
        """A prune was started and its outcome not collected by :meth:`pruned` yet."""
        return self._pruning is not None

    def pruned(self) -> int | None:
        """Rows the last prune deleted once it has ended (its error raised here), else None."""
        if self._pruning is None or not self._pruning.done():
            return None
        done, self._pruning = self._pruning, None
        return done.result()

    def close(self, *, release: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Stop the thread and let go of its connections: closed, or handed to
        ``release`` (the daemon abandons connections to a file swapped under it).
        Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self.discard()
        if self._pruning is not None:
            if release is not None:
                self._pruning.cancel()  # a file swapped under us: prune nothing more
            with contextlib.suppress(Exception):
                self._pruning.result()
            self._pruning = None
        self._pool.submit(self._close_conns, release).result()
        self._pool.shutdown(wait=True)

    def _close_conns(self, release: Callable[[sqlite3.Connection], None] | None) -> None:
        for conn in self._conns.values():
            (release or sqlite3.Connection.close)(conn)
        self._conns.clear()
