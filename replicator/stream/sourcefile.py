"""The source file as the daemon sees it: still the file it opened, or not.

A file deleted, replaced or truncated under the daemon's connection stops it
with one clear sentence (exit 3), and nothing read from it after that moment
is applied. While a truncation is only suspected (the WAL may be between
checkpoints) the daemon pauses: it reads and applies nothing until the file
looks whole again.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import psycopg

from replicator.source.sqlite import SourceFileChanged

if TYPE_CHECKING:
    from replicator.stream.daemon import Daemon


def lost(d: Daemon, exc: SourceFileChanged) -> SourceFileChanged:
    """Log and record why the source is unusable; the caller raises it (exit 3)."""
    d.log.error("source_lost", kind=exc.kind, path=str(d.path), reason=str(exc))
    d.source_lost = True
    d.errors.last_error = str(exc)
    d.state = "failed"
    d.health.tick(connected=d.conn is not None, lag_seconds=float("inf"), state="failed")
    with contextlib.suppress(psycopg.Error):
        d.beat(force=True)  # `replicator status` shows it as the last error
    return exc


def check_source(d: Daemon) -> str | None:
    """Stop, with one clear sentence, when the source file is gone, replaced or
    truncated under our connection; a reason while a truncation is only suspected."""
    if d.guard is None:
        return None
    try:
        return d.guard.check()
    except SourceFileChanged as exc:
        raise lost(d, exc) from None


def source_paused(d: Daemon) -> bool:
    """Pause (read and apply nothing) while the source file is suspect."""
    assert d.guard is not None and d.waker is not None
    suspicion = check_source(d)
    if suspicion is None:
        if d.state == "paused":
            d.log.info("source_ok", path=str(d.path))
            d.state = "streaming"
            d.errors.last_error = ""
        return False
    entering = d.state != "paused"
    if entering:
        d.log.warning("source_suspect", path=str(d.path), reason=suspicion, grace_s=d.guard.grace)
        d.state = "paused"
    d.errors.last_error = f"source file suspect: {suspicion}"
    d.health.tick(connected=True, lag_seconds=d.lagger.lag, state="paused")
    d.beat(force=entering)  # `status` shows the pause at once
    d.waker.wait(min(d.config.stream.poll_interval, 0.5))
    return True
