"""The alert rules, evaluated by Prometheus's own `promtool test rules` against the
series the replicator exposes: the dead-letter alert fires on the very first dead
letter because each table's counter is exposed at 0 from the start."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

import replicator.metrics as replicator_metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from PATH, or unpacked from Debian's package by .ci/promtool."""
    found = shutil.which("promtool")
    if found:
        return found
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "promtool")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            "promtool is needed to test the alert rules: install Prometheus's promtool, or "
            f"run `bash .ci/promtool` (Debian: unpacks it from the prometheus package):\n"
            f"{done.stderr[-1000:]}"
        )
    return str(ROOT / done.stdout.strip().splitlines()[-1])


def run_rule_test(promtool: str, tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text(encoding="utf-8"), encoding="utf-8")
    test = tmp_path / "test.yml"
    test.write_text(f"rule_files:\n  - alerts.yml\nevaluation_interval: 1m\n{body}", "utf-8")
    return subprocess.run(
        [promtool, "test", "rules", str(test)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


DEAD_LETTER_FIRES = """
tests:
  - interval: 1m
    input_series:
      - series: 'replicator_dead_letters_total{job="replicator", instance="a", table="items"}'
        values: '0 0 0 0 0 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 9m
        alertname: ReplicatorDeadLettersGrowing
        exp_alerts:
          - exp_labels:
              severity: warning
              job: replicator
              instance: a
              table: items
            exp_annotations:
              summary: "rows are going to the dead-letter table"
              description: "items: 1 new dead letter(s) in 15 minutes.
                See `replicator dead-letters list`."
"""

# The same first dead letter, from a series that did not exist before it: no alert.
# This is why every table's counter is declared at 0 when the daemon starts.
APPEARING_AT_ONE_IS_SILENT = """
tests:
  - interval: 1m
    input_series:
      - series: 'replicator_dead_letters_total{job="replicator", instance="a", table="items"}'
        values: '_ _ _ _ _ 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 9m
        alertname: ReplicatorDeadLettersGrowing
        exp_alerts: []
"""

HELD_ROWS_FIRE = """
tests:
  - interval: 1m
    input_series:
      - series: 'replicator_dead_letters_open{job="replicator", instance="a", table="items"}'
        values: '0 2+0x40'
    alert_rule_test:
      - eval_time: 20m
        alertname: ReplicatorRowsHeld
        exp_alerts: []
      - eval_time: 40m
        alertname: ReplicatorRowsHeld
        exp_alerts:
          - exp_labels:
              severity: warning
              job: replicator
              instance: a
              table: items
            exp_annotations:
              summary: "rows are held in dead letters"
              description: "items: 2 row(s) held for 30 minutes.
                See `replicator dead-letters list`."
"""


@pytest.mark.parametrize(
    "body",
    [DEAD_LETTER_FIRES, APPEARING_AT_ONE_IS_SILENT, HELD_ROWS_FIRE],
    ids=["first-dead-letter-fires", "appearing-at-one-is-silent", "held-rows-fire"],
)
def test_alert_rules_with_promtool(promtool: str, tmp_path: Path, body: str) -> None:
    done = run_rule_test(promtool, tmp_path, body)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_table_counter_is_exposed_at_zero_once_declared() -> None:
    replicator_metrics.declare_tables(["declared_table"])
    text = generate_latest(replicator_metrics.REGISTRY).decode()
    assert 'replicator_dead_letters_total{table="declared_table"} 0.0' in text
    assert 'replicator_dead_letters_open{table="declared_table"} 0.0' in text
    assert 'replicator_changes_applied_total{op="upsert",table="declared_table"} 0.0' in text
