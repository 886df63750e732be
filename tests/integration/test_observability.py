"""The daemon's metrics and health endpoints, read over HTTP from ``replicator run``.

One daemon process per test, against a real PostgreSQL database and a real
SQLite file. The daemon is paused with SIGSTOP while the source changes, so
the backlog is known exactly: ``replicator status`` must see it, and once the
daemon runs again ``/metrics`` and ``/readyz`` must report it for as long as it
lasts and report it gone afterwards. Counters must move by exactly the number
of changes applied.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
from harness import free_port, source_head, stream_position, wait_until
from obsutil import (
    http_get,
    listening_addresses,
    make_items_db,
    scrape,
    sqlite_exec,
    start_replicator,
    status_json,
    wait_applied,
)
from oracle import assert_replicated

from replicator import __version__
from replicator.config import load_config, parse_address

LAG_READY = 1.0
# Every family the issue names; each must be declared by the daemon's /metrics.
SERVED = {
    "replicator_lag_seconds": "gauge",
    "replicator_lag_changes": "gauge",
    "replicator_changes_applied": "counter",
    "replicator_rows_copied": "counter",
    "replicator_batches": "counter",
    "replicator_batch_duration_seconds": "histogram",
    "replicator_batch_size_changes": "histogram",
    "replicator_apply_latency_seconds": "histogram",
    "replicator_dead_letters": "counter",
    "replicator_errors": "counter",
    "replicator_retries": "counter",
    "replicator_snapshot_progress_ratio": "gauge",
    "replicator_last_applied_timestamp_seconds": "gauge",
    "replicator_source_position": "gauge",
    "replicator_applied_position": "gauge",
    "replicator_changelog_depth": "gauge",
    "replicator_up": "gauge",
    "replicator_build_info": "gauge",  # an Info: a gauge of 1 in the text format
}


def test_metrics_lag_and_readiness_follow_a_paused_and_resumed_daemon(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_items_db(tmp_path / "app.db", items=400, notes=20)
    port = free_port()
    daemon = start_replicator(
        source,
        pg_dsn,
        tmp_path / "daemon.log",
        metrics_address=f"127.0.0.1:{port}",
        settings={
            "REPLICATOR_METRICS_LAG_READY_SECONDS": str(LAG_READY),
            # One change per batch: the backlog below takes many commits to drain,
            # and the batch counters must move by exactly the number of changes.
            "REPLICATOR_STREAM_BATCH_MAX_CHANGES": "1",
        },
    )
    try:
        daemon.wait_streaming(timeout=180)
        wait_applied(daemon)
        assert daemon.metrics_port == port
        assert listening_addresses(daemon.pid) == [("127.0.0.1", port)]

        # -- caught up: live, ready, everything served ------------------------------
        health = http_get(port, "/healthz")
        assert health.status == 200, health.body
        assert health.json()["ok"] is True
        wait_until(lambda: http_get(port, "/readyz").status == 200, 60, "/readyz 200")
        ready = http_get(port, "/readyz").json()
        assert ready["state"] == "streaming" and ready["connected"] is True
        assert ready["lag_seconds"] <= LAG_READY
        assert http_get(port, "/nowhere").status == 404

        before = scrape(port)
        for family, kind in SERVED.items():
            assert before.families.get(family) == kind, f"{family} is not served as a {kind}"
        assert before.get("replicator_rows_copied_total", table="items") == 400
        assert before.get("replicator_rows_copied_total", table="notes") == 20
        assert before.get("replicator_snapshot_progress_ratio", table="items") == 1.0
        assert before.get("replicator_up") == 1
        assert before.get("replicator_build_info", version=__version__) == 1
        head = source_head(source) or 0
        assert before.get("replicator_applied_position") == head
        wait_until(
            lambda: scrape(port).get("replicator_lag_changes", table="items") == 0,
            30,
            "lag_changes 0 before the pause",
        )

        # -- paused: the backlog grows and `status` sees it ---------------------------
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            paused_at = stream_position(pg_dsn)
            assert paused_at is not None
            _write_backlog(source)
            changes = 400
            new_head = source_head(source)
            assert new_head == head + changes

            def lag_seen() -> bool:
                code, doc = status_json(source, pg_dsn)
                lag_seen.last = (code, doc)  # type: ignore[attr-defined]
                return code == 1 and doc["lag_changes"] == changes and doc["lag_seconds"] > 1.5

            wait_until(lag_seen, 90, "status --json to report the backlog", every=0.3)
            code, doc = lag_seen.last  # type: ignore[attr-defined]
            per_table = {t["table"]: t for t in doc["tables"]}
            assert per_table["items"]["lag_changes"] == changes
            assert per_table["notes"]["lag_changes"] == 0
            assert doc["applied_position"] == paused_at.seq == head
            assert doc["source_position"] == new_head
            assert doc["daemon"]["state"] == "running (streaming)"
            assert doc["verdict"].startswith(("catching up", "stalled")), doc["verdict"]
            assert stream_position(pg_dsn) == paused_at, "a stopped daemon applied something"
        finally:
            resumed_at = time.time()
            os.kill(daemon.pid, signal.SIGCONT)

        # -- resumed: while behind, /readyz is 503 and /metrics shows the lag ----------
        # After two committed batches the first step after SIGCONT (which sampled
        # the lag) is over; from then on every answer given while the applied
        # position is still short of the head must say "behind".
        wait_until(
            lambda: stream_position(pg_dsn).seq >= head + 2,  # type: ignore[union-attr]
            60,
            "the resumed daemon to apply",
            every=0.005,
        )
        behind = 0
        while True:
            readyz = http_get(port, "/readyz")
            metrics_now = scrape(port)
            position = stream_position(pg_dsn)
            assert position is not None
            if position.seq >= new_head:
                break
            behind += 1
            assert readyz.status == 503, (
                f"/readyz said ready at position {position.seq} of {new_head}, "
                f"the oldest pending change being older than {LAG_READY}s: {readyz.body!r}"
            )
            assert metrics_now.get("replicator_lag_changes", table="items") > 0
            assert metrics_now.get("replicator_lag_seconds", table="items") > LAG_READY
        assert behind > 0, "the backlog was applied before a single observation"

        # -- caught up again: lag 0, ready, counters moved by exactly the changes -------
        wait_until(lambda: http_get(port, "/readyz").status == 200, 60, "/readyz 200 again")

        def lag_zero() -> bool:
            m = scrape(port)
            return (
                m.get("replicator_lag_changes", table="items") == 0
                and m.get("replicator_lag_seconds", table="items") == 0
                and m.get("replicator_changelog_depth") == 0
            )

        wait_until(lag_zero, 60, "lag 0 and the change log pruned")
        after = scrape(port)

        def delta(name: str, **labels: str) -> float:
            return after.or0(name, **labels) - before.or0(name, **labels)

        assert delta("replicator_changes_applied_total", table="items", op="upsert") == 390
        assert delta("replicator_changes_applied_total", table="items", op="delete") == 10
        assert delta("replicator_changes_applied_total", table="notes", op="upsert") == 0
        assert delta("replicator_batches_total") == changes
        assert delta("replicator_batch_size_changes_count") == changes
        assert delta("replicator_batch_size_changes_sum") == changes
        assert delta("replicator_batch_duration_seconds_count") == changes
        assert delta("replicator_apply_latency_seconds_count") == changes
        assert after.get("replicator_applied_position") == new_head
        assert after.get("replicator_source_position") == new_head
        assert after.get("replicator_last_applied_timestamp_seconds", table="items") >= (
            resumed_at - 1
        )
        assert after.get("replicator_up") == 1

        code, doc = status_json(source, pg_dsn)
        assert (code, doc["verdict"], doc["lag_changes"]) == (0, "in sync", 0), doc

        # -- a dead letter and a lost connection are counted ----------------------------
        sqlite_exec(source, "UPDATE items SET qty = 'not a number' WHERE id = 7")
        wait_until(
            lambda: scrape(port).or0("replicator_dead_letters_total", table="items") == 1,
            60,
            "the dead letter to be counted",
        )
        errors_before = sum(after.by_label("replicator_errors_total", "kind").values())
        retries_before = sum(after.by_label("replicator_retries_total", "kind").values())
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name LIKE 'replicator%%'"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        sqlite_exec(source, "UPDATE notes SET body = 'after the outage' WHERE id = 1")
        daemon.wait_event("recovered", timeout=90)
        wait_until(lambda: source_head(source) == stream_position(pg_dsn).seq, 90, "catch-up")  # type: ignore[union-attr]
        final = scrape(port)
        assert sum(final.by_label("replicator_errors_total", "kind").values()) > errors_before
        assert sum(final.by_label("replicator_retries_total", "kind").values()) > retries_before
        assert final.get("replicator_up") == 1
        assert final.get("replicator_dead_letters_total", table="items") == 1
        assert_replicated(source, pg_dsn)

        assert daemon.stop() == 0
        wait_until(lambda: _refused(port), 10, "the metrics port to close")
    finally:
        daemon.kill()


def test_readyz_is_503_during_the_snapshot_and_the_listener_is_loopback_by_default(
    tmp_path: Path, pg_dsn: str
) -> None:
    # The default address is on the loopback interface ...
    default = load_config(None, env={}).metrics.address
    assert default == "127.0.0.1:9479"
    assert parse_address(default) == ("127.0.0.1", 9479)
    # ... and so is an address given without a host.
    source = make_items_db(tmp_path / "app.db", items=30_000, notes=10)
    port = free_port()
    daemon = start_replicator(
        source,
        pg_dsn,
        tmp_path / "daemon.log",
        metrics_address=f":{port}",
        settings={"REPLICATOR_SNAPSHOT_CHUNK_ROWS": "100"},
    )
    try:
        answers: list[tuple[int, str, float | None]] = []
        while not daemon.has_event("streaming"):
            gone = daemon.gone()
            assert gone is None, gone
            try:
                readyz = http_get(port, "/readyz")
                healthz = http_get(port, "/healthz")
                progress = scrape(port).value("replicator_snapshot_progress_ratio", table="items")
            except OSError:  # not listening yet
                time.sleep(0.01)
                continue
            state = readyz.json()["state"]
            answers.append((readyz.status, state, progress))
            if state == "snapshot":
                assert readyz.status == 503, readyz.body
                assert healthz.status == 200, healthz.body
        during = [a for a in answers if a[1] == "snapshot"]
        assert during, f"no /readyz answer during the snapshot: {answers[:5]}"
        ratios = [p for _s, _st, p in during if p is not None]
        assert all(0 <= p <= 1 for p in ratios), ratios
        assert listening_addresses(daemon.pid) == [("127.0.0.1", port)]
        wait_applied(daemon)
        wait_until(lambda: http_get(port, "/readyz").status == 200, 60, "/readyz 200")
        done = scrape(port)
        assert done.get("replicator_snapshot_progress_ratio", table="items") == 1.0
        assert done.get("replicator_rows_copied_total", table="items") == 30_000
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def _refused(port: int) -> bool:
    try:
        http_get(port, "/healthz", timeout=2)
    except OSError:
        return True
    return False


def _write_backlog(path: Path) -> None:
    sqlite_exec(
        path,
        "UPDATE items SET qty = qty + 1 WHERE id <= 380",  # 380 changes
        *[
            ("INSERT INTO items (id, name, qty) VALUES (?, ?, 0)", (i, f"new {i}"))
            for i in range(401, 411)
        ],  # 10 changes
        "DELETE FROM items WHERE id > 390 AND id <= 400",  # 10 changes
    )
