"""What ``replicator verify`` found, per table and overall, as text and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_LISTED = 50  # differing keys listed per table (all are counted)


@dataclass
class TableVerdict:
    table: str
    source_rows: int = 0
    target_rows: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    missing: int = 0  # in the source, not in the target
    extra: int = 0  # in the target, not in the source
    different: int = 0  # in both, with different values
    dead_lettered: int = 0  # of the above, explained by an open dead letter
    null_key: int = 0  # of the missing: rows whose key holds NULL (PostgreSQL cannot hold them)
    orphaned: int = 0  # differing, no dead letter: source orphans (their parent is not in SQLite)
    in_flight: int = 0  # differed, then matched once the stream caught up
    # How the rows were compared: by digests each database computed ("digest"), or
    # every row read and compared in Python ("exact": a kind without a text form).
    method: str = "exact"
    # What this run covered: the whole table, or (verify --changed) the rows changed
    # since its last verify, and what was trusted or why it could not be incremental.
    scope_note: str = ""
    exact_rows: int = 0  # rows read and compared one by one (all of them when "exact")
    repaired: int = 0
    # What --repair did per row (the first MAX_LISTED): key, problem, action, and for a
    # row it could not repair, why.
    repairs: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.different

    @property
    def ok(self) -> bool:
        return self.differences == 0


@dataclass
class VerifyReport:
    tables: list[TableVerdict] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)
    sequences_behind: list[dict[str, Any]] = field(default_factory=list)
    json_invalid: list[dict[str, Any]] = field(default_factory=list)
    open_dead_letters: int = 0
    # Rows SQLite refused in the reverse direction: shown, not a difference of this
    # direction (a row they concern that still differs is counted by the comparison).
    open_reverse_dead_letters: int = 0
    position: int | None = None
    seconds: float = 0.0
    changed: bool = False  # verify --changed: see each table's scope_note

    @property
    def ok(self) -> bool:
        return (
            all(t.ok for t in self.tables)
            and not self.orphans
            and not self.sequences_behind
            and not self.json_invalid
            and self.open_dead_letters == 0
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for t, verdict in zip(out["tables"], self.tables, strict=True):
            t["ok"] = verdict.ok
            t["differences"] = verdict.differences
        return out

    def render(self) -> str:
        head = (
            f"{'table':<26} {'source':>9} {'target':>9} {'missing':>7} {'extra':>6} "
            f"{'differ':>6} {'dead':>5} {'flight':>6} {'repair':>6}  ok"
        )
        lines = [head, "-" * len(head)]
        for t in self.tables:
            lines.append(
                f"{t.table[:26]:<26} {t.source_rows:>9} {t.target_rows:>9} {t.missing:>7} "
                f"{t.extra:>6} {t.different:>6} {t.dead_lettered:>5} {t.in_flight:>6} "
                f"{t.repaired:>6}  {_ok_word(t)}"
            )
        for t in self.tables:
            if t.repairs:
                lines.extend(_repair_lines(t))
                continue
            for ex in t.examples[:5]:
                lines.append(f"  {t.table}: {ex['problem']} key {ex['key']}{ex.get('detail', '')}")
        if self.changed:
            lines.extend(f"  {t.table}: {t.scope_note}" for t in self.tables)
        for o in self.orphans:
            lines.append(f"orphans: {o['rows']} row(s) of {o['table']} break {o['constraint']}")
        for s in self.sequences_behind:
            lines.append(
                f"sequence behind: {s['table']}.{s['column']} is at {s['last_value']}, "
                f"max id is {s['max']}"
            )
        for j in self.json_invalid:
            lines.append(
                f"json: {j['rows']} value(s) of {j['table']}.{j['column']} are JSON text "
                "wrapped in a string (double-encoded)"
            )
        if self.open_dead_letters:
            lines.append(
                f"{self.open_dead_letters} open dead letter(s): rows the target does not hold "
                "(see `replicator dead-letters list`)"
            )
        if self.open_reverse_dead_letters:
            lines.append(
                f"{self.open_reverse_dead_letters} open reverse dead letter(s): writes made in "
                "PostgreSQL that SQLite refused (not a difference by themselves; "
                "`replicator dead-letters list`, then fix or discard them)"
            )
        differences = sum(t.differences for t in self.tables)
        lettered = sum(t.dead_lettered for t in self.tables)
        orphaned = sum(t.orphaned for t in self.tables)
        others = self.orphans or self.sequences_behind or self.json_invalid
        if self.ok:
            verdict = "IDENTICAL"
        elif differences == lettered + orphaned and not others:
            named = f"the {lettered} dead-lettered row(s)"
            if orphaned:
                named += f" and {orphaned} source orphan(s) (rows whose parent SQLite deleted)"
            verdict = f"DIFFERENT only by {named}: every other row is identical"
        else:
            verdict = "DIFFERENT"
        where = f" at stream position {self.position}" if self.position is not None else ""
        lines.append(f"verdict: {verdict}{where} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _ok_word(t: TableVerdict) -> str:
    """'held' where every difference is a row held in a dead letter: not a surprise."""
    if t.ok:
        return "yes"
    return "held" if t.differences == t.dead_lettered else "NO"


def _repair_lines(t: TableVerdict) -> list[str]:
    """One line per row --repair handled: what it did, or why it could not."""
    lines = []
    for r in t.repairs:
        done = {"upserted": "copied from the source", "deleted": "deleted (not in the source)"}
        if r["action"] in done:
            lines.append(f"  {t.table}: {r['problem']} key {r['key']}: {done[r['action']]}")
        else:
            column = f" column {r['column']}" if r.get("column") else ""
            lines.append(
                f"  {t.table}: {r['problem']} key {r['key']}: NOT repaired{column}: {r['reason']}"
            )
    if t.repaired + sum(r["action"] == "failed" for r in t.repairs) > len(t.repairs):
        lines.append(f"  {t.table}: ... (the first {len(t.repairs)} rows are listed)")
    return lines
