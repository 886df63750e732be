"""Lines other libraries log go through our logger: one format, passwords redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from replicator.logs import configure


@pytest.fixture
def restored() -> Iterator[None]:
    """Leave logging as the rest of the suite expects it."""
    handlers = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = handlers
    structlog.reset_defaults()


def test_a_library_warning_is_a_json_line_like_ours(restored: None) -> None:
    out = io.StringIO()
    configure("info", "json", out)
    configure("info", "json", out)  # configured twice: still one line per record
    logging.getLogger("psycopg").warning(
        "error ignored terminating %s: %s", "Pipeline", "postgresql://u:sekret@h/d"
    )
    logging.getLogger("psycopg").info("below warning: not written")
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["logger"] == "psycopg"
    assert record["level"] == "warning"
    assert record["event"] == "error ignored terminating Pipeline: postgresql://u:***@h/d"
    assert "sekret" not in line
