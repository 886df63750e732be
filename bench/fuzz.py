#!/usr/bin/env python3
"""The differential fuzzer, run longer than CI runs it.

    python bench/fuzz.py [--examples 50] [--steps 12] [--seed 1] [--dsn URL]
                         [--features ci|all|FEATURE,...] [--shrink] [--workdir DIR]

Not part of CI. Runs the state machine of
tests/integration/test_fuzz_differential.py (random schemas, values and DML,
the daemon started, stopped and killed at random points, each check held
against the oracle and ``replicator verify``) for ``--examples`` examples of
up to ``--steps`` steps, from ``--seed``. ``--features ci`` (the default) is
what ``make test`` runs; ``all`` also generates the known gaps of
tests/fuzzgen.py (KNOWN_GAPS); a comma list picks features by name, and
``ci,+null_pk`` or ``all,-kill`` adjusts a profile. ``--shrink`` lets
hypothesis shrink a failure to a minimal example (slow: each attempt runs the
daemon). Prints each example's schema and check verdicts, then the failure
(its steps, as hypothesis prints them) or "no divergence"; exits 1 on a
divergence.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from benchlib import DEFAULT_DSN
from fuzzgen import ALL_FEATURES, CI_FEATURES
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test
from pgutil import TestDatabases
from test_fuzz_differential import fuzz_machine


def features(spec: str) -> frozenset[str]:
    """``ci``, ``all``, or names, each optionally ``+name`` / ``-name`` on what came before."""
    chosen: set[str] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in ("ci", "all"):
            chosen |= CI_FEATURES if part == "ci" else ALL_FEATURES
        elif part.startswith("-"):
            chosen.discard(part[1:])
        else:
            chosen.add(part.removeprefix("+"))
    unknown = chosen - ALL_FEATURES
    if unknown:
        raise SystemExit(f"unknown features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}")
    return frozenset(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="a server that may create databases")
    parser.add_argument("--features", default="ci")
    parser.add_argument("--shrink", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    chosen = features(args.features)
    print(
        f"fuzz: {args.examples} examples of up to {args.steps} steps, seed {args.seed}, "
        f"features {','.join(sorted(chosen))}",
        flush=True,
    )
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if args.shrink else [])
    options = settings(
        max_examples=args.examples,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    databases = TestDatabases(args.dsn)
    template = databases.create_template("fuzz")
    started = time.monotonic()
    examples = 0

    def report(line: str) -> None:
        nonlocal examples
        if line.startswith("schema "):
            examples += 1
            line = f"example {examples}: {line}"
        print(f"  {line}", flush=True)

    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        machine = fuzz_machine(databases, template, Path(workdir), chosen, report)
        try:
            run_state_machine_as_test(seed(args.seed)(machine), settings=options)
        except Exception as exc:  # the divergence, with hypothesis' steps in its notes
            print(f"DIVERGENCE after {examples} example(s), {time.monotonic() - started:.0f} s:")
            print("\n".join(getattr(exc, "__notes__", [])))
            traceback.print_exception(exc, limit=-8, file=sys.stdout)
            return 1
        finally:
            databases.drop_templates()
    print(f"no divergence in {examples} example(s), {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
