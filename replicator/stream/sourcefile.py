"""The source file as the daemon sees it: still the file it opened, or not.

A file deleted, replaced or truncated under the daemon's connection stops it
with one clear sentence (exit 3), and nothing read from it after that moment
is applied. While a truncation is only suspected (the WAL may be between
checkpoints) the daemon pauses: it reads and applies nothing until the file
looks whole again.
"""

from __future__ import annotations

import contextlib
import time
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


# A file found short for less than this is held back from quietly: a checkpoint
# or a commit extends it within milliseconds. Nothing is read or applied either way.
QUIET_SUSPICION = 1.0  # seconds


def source_paused(d: Daemon) -> bool:
    """Pause (read and apply nothing) while the source file is suspect. A suspicion
    shorter than QUIET_SUSPICION is not announced (no log line, no "paused" state),
    so status and /readyz do not flicker on every checkpoint of a busy writer."""
    assert d.guard is not None and d.waker is not None
    suspicion = check_source(d)
    now = time.monotonic()
    if suspicion is None:
        d.suspect_since = None
        if d.state == "paused":
            d.log.info("source_ok", path=str(d.path))
            d.state = "streaming"
            d.errors.last_error = ""
        return False
    if d.suspect_since is None:
        d.suspect_since = now
    if d.state != "paused" and now - d.suspect_since < QUIET_SUSPICION:
        d.waker.wait(min(d.config.stream.poll_interval, 0.05))
        return True
    entering = d.state != "paused"
    if entering:
        d.log.warning("source_suspect", path=str(d.path), reason=suspicion, grace_s=d.guard.grace)
        d.state = "paused"
    d.errors.last_error = f"source file suspect: {suspicion}"
    d.health.tick(connected=True, lag_seconds=d.lagger.lag, state="paused")
    d.beat(force=entering)  # `status` shows the pause at once
    d.waker.wait(min(d.config.stream.poll_interval, 0.5))
    return True
