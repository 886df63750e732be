"""Who holds a lock on the source's files, asked without taking one.

The source guard (``replicator.source.sqlite.SourceGuard``) uses it to tell
SQLite writing the database file (a WAL checkpoint, a rollback-journal commit)
from someone cutting it. ``F_GETLK`` only asks: it takes no lock, changes
nothing, and never reports this process's own locks.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys

# SQLite's unix locking (os_unix.c): a writer of the database file holds a write
# lock on the SHARED range from PENDING_BYTE + 2 (rollback journal), a WAL
# checkpointer one on byte 120 + 1 of the -shm file (WAL_CKPT_LOCK).
PENDING_BYTE = 0x40000000
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
WAL_CKPT_BYTE = 121
# struct flock, by platform: its field order differs (None: locks are not asked).
_FLOCK = {"linux": "hhqqi", "darwin": "qqihh"}.get(sys.platform)


def open_quietly(path: str) -> int | None:
    """A read-only descriptor of ``path`` to ask about locks with, None when it is not
    there. Keep it for as long as SQLite has the file open: closing *any* descriptor
    of a file drops every POSIX lock this process holds on it, SQLite's included."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def write_locked(fd: int | None, start: int, length: int) -> bool:
    """Whether another process holds a write lock on bytes ``[start, start + length)``
    of ``fd``'s file. F_GETLK only asks: it takes no lock, and our own process's
    locks never show."""
    if fd is None or _FLOCK is None:
        return False
    fields: tuple[int, ...] = (fcntl.F_RDLCK, os.SEEK_SET, start, length, 0)
    if _FLOCK == "qqihh":
        fields = (start, length, 0, fcntl.F_RDLCK, os.SEEK_SET)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, *fields))
    except OSError:
        return False
    unpacked = struct.unpack(_FLOCK, answer)
    lock_type = unpacked[0] if _FLOCK == "hhqqi" else unpacked[3]
    return bool(lock_type != fcntl.F_UNLCK)
