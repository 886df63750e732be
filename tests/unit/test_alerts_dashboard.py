"""The shipped Prometheus alert rules and Grafana dashboard against the metrics we expose.

Both files parse; every ``replicator_*`` name they use is a sample the
registry exposes (after importing :mod:`replicator.metrics`); counters are
only read through ``rate``/``increase``, gauges only through ``delta``;
every label a legend or an alert text prints is a label the expression's
result carries; and ``and``/``unless`` only join vectors whose label sets can
match (otherwise PromQL's one-to-one matching finds nothing and the alert
can never fire).

The label inference is a small reader for the PromQL forms these files use.
An expression it does not understand fails the test (extend the reader),
it is never waved through.

PyYAML is used when it is installed; otherwise a strict reader of the block
YAML subset the rule file is written in (it rejects anything else).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import replicator.metrics as replicator_metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "config" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "config" / "grafana" / "replicator.json"
SCRAPE_LABELS = frozenset({"job", "instance"})  # Prometheus adds them to every scraped series
NAME = re.compile(r"\breplicator_[a-z0-9_]+\b")


# --------------------------------------------------------------------------
# YAML: PyYAML when installed, else a strict block-subset reader.


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str, where: int) -> Any:
    text = text.strip()
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise ValueError(f"line {where}: unterminated double-quoted scalar")
        return json.loads(text)  # YAML's double-quoted escapes used here are JSON's
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"line {where}: unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"line {where}: multi-line flow sequences are not supported")
        inner = text[1:-1].strip()
        return [_scalar(part, where) for part in inner.split(",")] if inner else []
    if text[:1] in ("&", "*", "!", "|", ">", "{", "%", "@", "`"):
        raise ValueError(f"line {where}: unsupported YAML syntax {text[:1]!r}")
    if ": " in text or text.endswith(":"):
        raise ValueError(f"line {where}: mapping values are not allowed in a plain scalar")
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    return text


def _lines(text: str) -> list[tuple[int, int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {number}: tab in indentation")
        line = _strip_comment(raw)
        if line.strip():
            out.append((number, len(line) - len(line.lstrip(" ")), line.strip()))
    return out


def _node(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][2] == "-" or lines[i][2].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("-"):
        number, _ind, content = lines[i]
        rest = content[1:].strip()
        if not rest:
            if i + 1 >= len(lines) or lines[i + 1][1] <= indent:
                raise ValueError(f"line {number}: empty sequence item")
            value, i = _node(lines, i + 1, lines[i + 1][1])
        elif re.match(r"^[A-Za-z_][\w.-]*:(\s|$)", rest):
            # "- key: value": a mapping whose first line starts after the dash.
            inner = indent + (len(content) - len(rest))
            lines[i] = (number, inner, rest)
            value, i = _mapping(lines, i, inner)
        else:
            value, i = _scalar(rest, number), i + 1
        items.append(value)
    if i < len(lines) and lines[i][1] > indent:
        raise ValueError(f"line {lines[i][0]}: unexpected indentation")
    return items, i


def _mapping(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent and not lines[i][2].startswith("- "):
        number, _ind, content = lines[i]
        match = re.match(r"^([A-Za-z_][\w.-]*):(?:\s+(.*))?$", content)
        if not match:
            raise ValueError(f"line {number}: expected 'key: value', got {content!r}")
        key, value = match.group(1), match.group(2)
        if key in out:
            raise ValueError(f"line {number}: duplicate key {key!r}")
        if value is not None and value.strip():
            out[key], i = _scalar(value, number), i + 1
            continue
        i += 1
        if i < len(lines) and (
            lines[i][1] > indent or (lines[i][1] == indent and lines[i][2].startswith("-"))
        ):
            out[key], i = _node(lines, i, lines[i][1])
        else:
            out[key] = None
    if i < len(lines) and lines[i][1] > indent:
        raise ValueError(f"line {lines[i][0]}: unexpected indentation")
    return out, i


def parse_block_yaml(text: str) -> Any:
    lines = _lines(text)
    if not lines:
        return None
    if lines[0][1] != 0:
        raise ValueError(f"line {lines[0][0]}: the document must start at column 0")
    value, end = _node(lines, 0, 0)
    if end != len(lines):
        raise ValueError(f"line {lines[end][0]}: unexpected content")
    return value


def load_yaml(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return parse_block_yaml(text)
    document = yaml.safe_load(text)
    assert parse_block_yaml(text) == document, "the subset reader disagrees with PyYAML"
    return document


def test_the_yaml_subset_reader_reads_what_it_supports_and_rejects_the_rest() -> None:
    text = (
        "# comment\n"
        "a:\n"
        "  - name: x  # trailing comment\n"
        "    n: 3\n"
        '    s: "q: #not a comment"\n'
        "  - plain value\n"
        "b: ['one', \"two\"]\n"
        "c:\n"
        "- 1\n"
    )
    assert parse_block_yaml(text) == {
        "a": [{"name": "x", "n": 3, "s": "q: #not a comment"}, "plain value"],
        "b": ["one", "two"],
        "c": [1],
    }
    for bad in ("a: |\n  text\n", "a: &x 1\n", "a: b: c\n", "a: 1\n   b: 2\n", "a: 1\na: 2\n"):
        with pytest.raises(ValueError):
            parse_block_yaml(bad)


# --------------------------------------------------------------------------
# What the registry exposes.


def exposed() -> dict[str, tuple[str, frozenset[str]]]:
    """Sample name -> (kind, label names) for every ``replicator_*`` sample that can appear."""
    labels_of = {
        c._name: frozenset(c._labelnames)
        for c in vars(replicator_metrics).values()
        if hasattr(c, "_labelnames") and hasattr(c, "_name")
    }
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in REGISTRY.collect():
        name = family.name
        if not name.startswith("replicator_"):
            continue
        labels = labels_of.get(name, frozenset())
        if family.type == "counter":
            out[f"{name}_total"] = ("counter", labels)
        elif family.type == "gauge":
            out[name] = ("gauge", labels)
        elif family.type == "histogram":
            out[f"{name}_bucket"] = ("bucket", labels | {"le"})
            out[f"{name}_sum"] = ("counter", labels)
            out[f"{name}_count"] = ("counter", labels)
        elif family.type == "info":
            out[f"{name}_info"] = ("gauge", labels | {"version"})
        else:
            raise AssertionError(f"{name}: unexpected metric type {family.type}")
    return out


def test_the_registry_exposes_every_metric_the_issue_names() -> None:
    names = exposed()
    for name, kind in {
        "replicator_lag_seconds": "gauge",
        "replicator_lag_changes": "gauge",
        "replicator_changes_applied_total": "counter",
        "replicator_rows_copied_total": "counter",
        "replicator_batches_total": "counter",
        "replicator_batch_duration_seconds_bucket": "bucket",
        "replicator_batch_size_changes_bucket": "bucket",
        "replicator_apply_latency_seconds_bucket": "bucket",
        "replicator_dead_letters_total": "counter",
        "replicator_errors_total": "counter",
        "replicator_retries_total": "counter",
        "replicator_snapshot_progress_ratio": "gauge",
        "replicator_last_applied_timestamp_seconds": "gauge",
        "replicator_source_position": "gauge",
        "replicator_applied_position": "gauge",
        "replicator_changelog_depth": "gauge",
        "replicator_up": "gauge",
        "replicator_build_info": "gauge",
    }.items():
        assert names.get(name, ("missing",))[0] == kind, f"{name}: {names.get(name)}"
    assert names["replicator_changes_applied_total"][1] == {"table", "op"}
    assert names["replicator_errors_total"][1] == {"kind"}


# --------------------------------------------------------------------------
# A small PromQL reader: which labels an expression's result carries.

AGGREGATORS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "group"}
RANGE_FUNCTIONS = {  # function -> the kinds of sample it is meant for
    "rate": {"counter", "bucket"},
    "irate": {"counter", "bucket"},
    "increase": {"counter", "bucket"},
    "delta": {"gauge"},
    "idelta": {"gauge"},
    "deriv": {"gauge"},
}
SET_OPERATORS = ("and", "unless", "or")
ARITHMETIC = ("==", "!=", ">=", "<=", ">", "<", "+", "-", "*", "/")


class PromQLError(AssertionError):
    pass


def _top_level(expr: str) -> Iterator[tuple[int, str]]:
    """(index, char) of every character outside parentheses, braces, brackets and quotes."""
    depth, quote = 0, None
    for i, ch in enumerate(expr):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, ch


PRECEDENCE = {
    "or": 0,
    "and": 1,
    "unless": 1,
    "==": 2,
    "!=": 2,
    ">=": 2,
    "<=": 2,
    ">": 2,
    "<": 2,
    "+": 3,
    "-": 3,
    "*": 4,
    "/": 4,
}


def _operators(expr: str) -> list[tuple[int, str]]:
    """(index, operator) of every top-level binary operator, left to right."""
    top = dict(_top_level(expr))
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(expr):
        if i not in top:
            i += 1
            continue
        word = re.match(r"[A-Za-z_]\w*", expr[i:])
        if word and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
            if word.group(0) in ("or", "and", "unless"):
                found.append((i, word.group(0)))
            i += len(word.group(0))
            continue
        two = expr[i : i + 2]
        if two in ("==", "!=", ">=", "<="):
            found.append((i, two))
            i += 2
            continue
        ch = expr[i]
        if ch in "<>*/+-":
            before = expr[:i].rstrip()
            unary = ch in "+-" and (
                not before or before[-1] in "(,=<>!*/+-" or before.endswith(("and", "or", "unless"))
            )
            if not unary:
                found.append((i, ch))
        i += 1
    return found


def _split_binary(expr: str) -> tuple[str, str, str] | None:
    """Split at the lowest-precedence top-level binary operator (the rightmost of them,
    PromQL's binary operators being left-associative): (left, operator, right)."""
    ops = _operators(expr)
    if not ops:
        return None
    lowest = min(PRECEDENCE[op] for _i, op in ops)
    i, op = [x for x in ops if PRECEDENCE[x[1]] == lowest][-1]
    return expr[:i].strip(), op, expr[i + len(op) :].strip()


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def result_labels(expr: str, names: dict[str, tuple[str, frozenset[str]]]) -> frozenset[str]:
    """The label names of ``expr``'s result (without __name__); raises on anything unknown."""
    expr = _strip_parens(expr)
    split = _split_binary(expr)
    if split is not None:
        left, op, right = split
        modifier = re.match(r"^(bool\s+)?(on|ignoring|group_left|group_right)\b", right)
        if modifier and modifier.group(2) != "bool":
            raise PromQLError(f"vector-matching modifiers are not read by this test: {expr}")
        right = re.sub(r"^bool\s+", "", right)
        if re.fullmatch(r"[-+]?\d+(\.\d+)?", right):
            return result_labels(left, names)
        if re.fullmatch(r"[-+]?\d+(\.\d+)?", left):
            return result_labels(right, names)
        lhs, rhs = result_labels(left, names), result_labels(right, names)
        if op == "or":
            return lhs | rhs
        if lhs != rhs:
            raise PromQLError(
                f"'{op}' joins {sorted(lhs)} with {sorted(rhs)} one-to-one: no series can "
                f"ever match, so the result is always empty: {expr}"
            )
        return lhs
    agg = re.match(
        r"^(\w+)\s*(?:(by|without)\s*\(([^)]*)\)\s*)?\((.*)\)\s*(?:(by|without)\s*\(([^)]*)\))?$",
        expr,
        re.S,
    )
    if agg and agg.group(1) in AGGREGATORS:
        inner = result_labels(agg.group(4), names)
        kind = agg.group(2) or agg.group(5)
        listed = frozenset(
            x.strip() for x in (agg.group(3) or agg.group(6) or "").split(",") if x.strip()
        )
        if kind is None:
            return frozenset()
        if kind == "by":
            missing = listed - inner
            if missing:
                raise PromQLError(f"aggregates by {sorted(missing)}, which {expr} lacks")
            return listed
        return inner - listed
    call = re.match(r"^(\w+)\s*\((.*)\)$", expr, re.S)
    if call and call.group(1) in RANGE_FUNCTIONS:
        ranged = re.fullmatch(r"\s*(.+?)\s*\[\s*\d+[smhdwy]\s*\]\s*", call.group(2), re.S)
        if not ranged:
            raise PromQLError(f"{call.group(1)}() needs a range vector: {expr}")
        selector = ranged.group(1)
        metric = re.match(r"^[a-zA-Z_:][\w:]*", selector)
        if metric and metric.group(0) in names:
            kind = names[metric.group(0)][0]
            allowed = RANGE_FUNCTIONS[call.group(1)]
            if kind not in allowed:
                raise PromQLError(f"{call.group(1)}() of a {kind} ({metric.group(0)}): {expr}")
        return result_labels(selector, names)
    if call and call.group(1) == "histogram_quantile":
        q, _, inner = call.group(2).partition(",")
        float(q)
        labels = result_labels(inner, names)
        if "le" not in labels:
            raise PromQLError(f"histogram_quantile() over a vector without 'le': {expr}")
        return labels - {"le"}
    selector = re.fullmatch(r"([a-zA-Z_:][\w:]*)\s*(\{([^}]*)\})?", expr)
    if selector:
        name = selector.group(1)
        matchers = {
            m.group(1) for m in re.finditer(r"(\w+)\s*(=~|!~|!=|=)", selector.group(3) or "")
        }
        if name == "up":
            own: frozenset[str] = frozenset()
        elif name in names:
            own = names[name][1]
        else:
            raise PromQLError(f"{name} is not a metric the replicator exposes: {expr}")
        unknown = matchers - own - SCRAPE_LABELS
        if unknown:
            raise PromQLError(f"{name} has no label(s) {sorted(unknown)}: {expr}")
        return own | SCRAPE_LABELS
    raise PromQLError(f"this test cannot read the expression: {expr!r}")


def test_the_promql_reader_catches_what_it_is_for() -> None:
    names = exposed()
    assert result_labels(
        "sum by (table, op) (rate(replicator_changes_applied_total[1m]))", names
    ) == {
        "table",
        "op",
    }
    assert result_labels("max(replicator_lag_seconds) > 60", names) == set()
    for bad in (
        "sum(replicator_lag_changes) > 0 and delta(replicator_applied_position[10m]) == 0",
        "rate(replicator_lag_seconds[5m])",  # rate of a gauge
        "delta(replicator_batches_total[5m])",  # delta of a counter
        "replicator_no_such_metric",
        'replicator_lag_seconds{kind="x"}',
        "histogram_quantile(0.9, sum(rate(replicator_apply_latency_seconds_bucket[5m])))",
    ):
        with pytest.raises(PromQLError):
            result_labels(bad, names)


# --------------------------------------------------------------------------
# The alert rules.


def alert_rules() -> list[dict[str, Any]]:
    document = load_yaml(ALERTS)
    assert isinstance(document, dict) and isinstance(document.get("groups"), list), document
    rules = []
    for group in document["groups"]:
        assert isinstance(group.get("name"), str) and group["name"]
        assert isinstance(group.get("rules"), list) and group["rules"], group
        rules.extend(group["rules"])
    return rules


def test_alert_rules_parse_and_are_well_formed() -> None:
    rules = alert_rules()
    assert len(rules) >= 5
    seen = set()
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), rule
        assert name not in seen, f"alert {name} is defined twice"
        seen.add(name)
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["for"]
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), rule
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule


def test_alert_rules_use_only_exposed_metrics_and_can_fire() -> None:
    names = exposed()
    for rule in alert_rules():
        expr = rule["expr"]
        used = set(NAME.findall(expr))
        assert used, f"{rule['alert']} uses no replicator metric: {expr}"
        assert used <= set(names), f"{rule['alert']}: not exposed: {sorted(used - set(names))}"
        try:
            labels = result_labels(expr, names)
        except PromQLError as exc:
            raise AssertionError(f"alert {rule['alert']}: {exc}") from None
        text = " ".join(str(v) for v in rule.get("annotations", {}).values())
        printed = set(re.findall(r"\$labels\.(\w+)", text))
        assert printed <= labels, (
            f"alert {rule['alert']} prints {sorted(printed - labels)}, which {expr!r} drops"
        )


def test_prometheus_scrapes_the_job_the_alerts_name_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    named = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert named <= jobs, f"alerts name jobs {sorted(named - jobs)} nothing scrapes"
    assert any(Path(p).name == ALERTS.name for p in config["rule_files"]), config["rule_files"]


# --------------------------------------------------------------------------
# The dashboard.


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_the_dashboard_parses_and_its_panels_are_well_formed() -> None:
    board = dashboard()
    assert board.get("uid") and board.get("title")
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
    panels = board["panels"]
    assert panels, "no panels"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        assert panel.get("title") and panel.get("type"), panel
        assert {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})), panel["title"]
        for ref in re.findall(r"\$\{(\w+)\}", json.dumps(panel.get("datasource"))):
            assert ref in variables, f"{panel['title']}: datasource variable ${ref} is undefined"
        assert panel.get("targets"), f"{panel['title']} has no query"


def test_the_dashboard_uses_only_exposed_metrics_and_its_legends_exist() -> None:
    names = exposed()
    used_anywhere: set[str] = set()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            used = set(NAME.findall(expr))
            assert used, f"{panel['title']}: no replicator metric in {expr}"
            assert used <= set(names), f"{panel['title']}: not exposed: {used - set(names)}"
            used_anywhere |= used
            try:
                labels = result_labels(expr, names)
            except PromQLError as exc:
                raise AssertionError(f"panel {panel['title']!r}: {exc}") from None
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= labels, (
                f"panel {panel['title']!r} legend uses {sorted(legend - labels)}, "
                f"which {expr!r} does not carry"
            )
    # The dashboard shows the core of the stream.
    for name in (
        "replicator_lag_seconds",
        "replicator_lag_changes",
        "replicator_changes_applied_total",
        "replicator_dead_letters_total",
        "replicator_up",
    ):
        assert name in used_anywhere, f"the dashboard does not show {name}"
