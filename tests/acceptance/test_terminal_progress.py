"""On a terminal, the snapshot's progress bars and its log lines do not share a line:
run in a real terminal (tmux) and read back off its screen."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from harness import REPLICATOR, daemon_env

from replicator.demo.sample import generate_reference_db

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[(info|warning|error) *\] ")


def test_log_lines_stay_off_the_progress_bars(tmp_path: Path, pg_dsn: str) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is needed to run the snapshot in a real terminal (apt-get install tmux)")
    source = tmp_path / "app.db"
    generate_reference_db(source, artifacts=4000, seed=3, bad_values=True)  # dead letters log
    env = daemon_env(
        source,
        pg_dsn,
        REPLICATOR_SNAPSHOT_CREATE_TABLES="true",
        REPLICATOR_SNAPSHOT_CHUNK_ROWS="100",  # many updates of the bars
        REPLICATOR_SNAPSHOT_PARALLEL_TABLES="1",
        REPLICATOR_LOG_FORMAT="auto",  # a terminal: readable lines, and the bars
    )
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    done = tmp_path / "done"
    command = f"env -i {assignments} {REPLICATOR} snapshot; echo $? > {done}; sleep 60"
    session = f"rt{tmp_path.name[-8:]}".replace(".", "")
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", command], check=True
    )
    try:
        deadline = time.monotonic() + 120
        while not done.exists():
            assert time.monotonic() < deadline, "the snapshot did not end"
            time.sleep(0.2)
        screen = subprocess.run(
            [tmux, "capture-pane", "-p", "-J", "-S", "-", "-t", session],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
    assert done.read_text().strip() == "0", screen[-3000:]
    lines = screen.splitlines()
    logged = [line for line in lines if "dead_letter" in line or "snapshot_table_done" in line]
    assert logged, screen[-3000:]
    # Every log line starts at the first column, never after a bar or another line.
    assert all(LOG_LINE.match(line) for line in logged), [
        line for line in logged if not LOG_LINE.match(line)
    ]
    assert not [line for line in lines if "━" in line and "[" in line and "Z [" in line]
    assert "total" in screen  # the summary table at the end
