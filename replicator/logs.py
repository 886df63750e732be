"""Structured logging: JSON lines off a terminal, readable lines on one.

Event names are stable (``snapshot_chunk``, ``batch_applied``, ``retrying``,
``recovered``, ``dead_letter`` ...) and carry bound context. A processor
redacts anything that looks like a connection string with a password, so a
DSN can never leak through a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from replicator.dsn import KV_PASSWORD, redact_dsn

_DSN = re.compile(r"postgres(?:ql)?://[^\s'\"]+")


def scrub(text: str) -> str:
    """Redact passwords in any DSN-looking part of ``text``."""
    text = _DSN.sub(lambda m: redact_dsn(m.group(0)), text)
    return KV_PASSWORD.sub(r"\1***", text)


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and ("://" in value or "password" in value.lower()):
            event[key] = scrub(value)
    return event


class _Stream:
    """Where log lines go: the configured stream, or, while a progress display owns
    the terminal, its console, which prints them above the bars."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._partial = ""  # a line written in pieces (print writes its newline apart)

    def write(self, text: str) -> int:
        console = _OUTPUT.console
        if console is None and not self._partial:
            return int(self.stream.write(text))
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if console is None:
                self.stream.write(line + "\n")
            else:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _Output:
    """Where and how log lines are written, as configure() and a progress display set it."""

    console: Any = None  # the rich Console of a progress display on screen, if any
    json = True  # log lines are JSON (not for a person at a terminal)


_OUTPUT = _Output()


def json_lines() -> bool:
    """Whether log lines are JSON records (else readable lines for a terminal)."""
    return _OUTPUT.json


def live_console(console: Any) -> None:
    """Send log lines through ``console`` (None: straight to the stream again)."""
    _OUTPUT.console = console


class _Forward(logging.Handler):
    """What libraries log through the standard library (psycopg's "error ignored
    terminating Pipeline", alembic's warnings), written as our own lines are: one
    format on the stream, passwords redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            write = getattr(log, record.levelname.lower(), log.warning)
            exc_info = record.exc_info if record.exc_info and record.exc_info[0] else None
            write(record.getMessage(), logger=record.name, exc_info=exc_info)
        except Exception:
            self.handleError(record)


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    _OUTPUT.json = fmt == "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stream(stream))),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Forward)]:
        root.removeHandler(handler)
    root.addHandler(_Forward(level=logging.WARNING))


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("replicator").bind(**context)
