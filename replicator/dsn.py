"""Connection strings: validated once, kept secret, shown only with the password masked.

A DSN may carry a password, so it travels as a :class:`Secret` and anything
that prints one goes through :func:`redact_dsn`, which splits it the way libpq
does so that no password libpq would use slips through unmasked.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from psycopg import conninfo

from replicator.errors import ConfigError


class Secret:
    """A string that refuses to be printed: ``repr`` and ``str`` redact it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return redact_dsn(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (URL or key=value form)."""
    if not dsn:
        return dsn
    if "://" in dsn:
        # Split the way libpq does, not the way urlsplit does: the user info ends
        # at the first '@' before any '/', so a password may hold '?', '#' or '['
        # unescaped (libpq accepts them) and must be masked all the same.
        scheme, rest = dsn.split("://", 1)
        cut = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
        prefix = ""
        if cut < len(rest) and rest[cut] == "@":
            userinfo, rest = rest[:cut], rest[cut + 1 :]
            user = userinfo.split(":", 1)[0]
            prefix = f"{user}:***@" if ":" in userinfo else f"{user}@"
        hostpath, sep, query = rest.partition("?")
        if sep:
            query = "&".join(
                "password=***" if unquote(q.split("=", 1)[0]).lower() == "password" else q
                for q in query.split("&")
            )
        return f"{scheme}://{prefix}{hostpath}{sep}{query}"
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable connection string>"
    if "password" in params:
        params["password"] = "***"  # noqa: S105 - the mask, not a password
    return " ".join(f"{k}={v}" for k, v in params.items())


def validate_dsn(dsn: str) -> None:
    shown = redact_dsn(dsn)
    if "://" in dsn:
        scheme = dsn.split("://", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"target URL {shown} is not a PostgreSQL URL (expected postgresql://...)"
            )
    try:
        conninfo.conninfo_to_dict(dsn)
    except Exception as exc:
        reason = without_secrets(_first_line(exc), dsn)
        if "percent-encoded" in reason:
            reason += " (a % in a user name or password is written %25)"
        raise ConfigError(f"target URL {shown} is malformed: {reason}") from None


# A password in key=value form (quoted, or up to the next blank): what a message or
# a log line must never show. Group 2 is the value as written.
KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def _secrets_of(dsn: str) -> list[str]:
    """The password parts of a DSN as written (before any decoding), wherever they are."""
    found = [m[2].strip("'") for m in KV_PASSWORD.finditer(dsn)] if "://" not in dsn else []
    if "://" in dsn:
        rest = dsn.split("://", 1)[1]
        cut = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
        if cut < len(rest) and rest[cut] == "@" and ":" in rest[:cut]:
            found.append(rest[:cut].split(":", 1)[1])
        query = rest.partition("?")[2]
        found += [
            q.split("=", 1)[1]
            for q in query.split("&")
            if "=" in q and unquote(q.split("=", 1)[0]).lower() == "password"
        ]
    return [s for s in found if s]


def without_secrets(reason: str, dsn: str) -> str:
    """libpq's message with no part of a password in it: it quotes the whole URI in
    some messages and the offending token (maybe the password) in others."""
    reason = reason.replace(dsn, redact_dsn(dsn))
    secrets = _secrets_of(dsn)

    def hide(match: re.Match[str]) -> str:
        token = match.group(1)
        if any(token in s or s in token for s in secrets):
            return '"***"'
        return match.group(0)

    return re.sub(r'"([^"]*)"', hide, reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
