"""Wakes the daemon's loop when the source changes, or every poll interval.

With watchfiles (inotify on Linux) a write to the SQLite file, its ``-wal`` or
its ``-journal`` wakes the loop within milliseconds; where file events are not
available (or stop), the loop falls back to polling at ``stream.poll_interval``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Waker:
    """Wakes the loop on file changes of the source (or every poll interval)."""

    def __init__(self, path: Path, *, watch: bool) -> None:
        self.event = threading.Event()
        self._stop = threading.Event()
        self.mode = "poll"
        self._thread: threading.Thread | None = None
        if watch:
            try:
                import watchfiles  # noqa: F401 - availability check
            except ImportError:  # pragma: no cover - a declared dependency
                return
            self.mode = "watch"
            names = {path.name, f"{path.name}-wal", f"{path.name}-journal"}
            self._thread = threading.Thread(
                target=self._watch, args=(path.parent, names), name="watch", daemon=True
            )
            self._thread.start()

    def _watch(self, folder: Path, names: set[str]) -> None:
        import watchfiles

        try:
            for _changes in watchfiles.watch(
                folder,
                watch_filter=lambda _change, p: os.path.basename(p) in names,
                debounce=20,
                step=1,
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
            ):
                self.event.set()
        except Exception:  # events stop (e.g. inotify limits): polling goes on
            self.mode = "poll"

    def wake(self) -> None:
        self.event.set()

    def wait(self, timeout: float) -> None:
        self.event.wait(timeout)
        self.event.clear()

    def close(self) -> None:
        self._stop.set()
        self.event.set()
