#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` profile: inclusive and self time per function.

    python bench/pyspy_top.py bench/out/stream-catchup-large.pyspy.txt [--top 30]
        [--all-threads] [--under 'Applier.apply'] [--lines]

Only the main thread (stacks rooted at ``<module>``) is counted unless
``--all-threads``. ``--under NAME`` keeps only stacks that pass through a
function whose name contains NAME, and reports percentages of those.
Frames are merged per function (line numbers dropped) unless ``--lines``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def load(path: Path, all_threads: bool, keep_lines: bool) -> list[tuple[list[str], int]]:
    stacks = []
    for raw in path.read_text().splitlines():
        body, _, count = raw.rpartition(" ")
        if not body:
            continue
        frames = body.split(";")
        if frames and frames[0].startswith("thread ("):
            frames = frames[1:]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not all_threads and (not frames or not frames[0].startswith("<module>")):
            continue
        if not keep_lines:
            frames = [_LINE.sub(")", f) for f in frames]
        stacks.append((frames, int(count)))
    return stacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--all-threads", action="store_true")
    parser.add_argument("--under", default=None)
    parser.add_argument("--lines", action="store_true", help="keep line numbers")
    args = parser.parse_args()
    stacks = load(args.profile, args.all_threads, args.lines)
    if args.under:
        kept = []
        for frames, n in stacks:
            for i, f in enumerate(frames):
                if args.under in f:
                    kept.append((frames[i:], n))
                    break
        stacks = kept
    total = sum(n for _, n in stacks)
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for frames, n in stacks:
        for f in set(frames):
            inclusive[f] += n
        if frames:
            self_time[frames[-1]] += n
    print(
        f"{args.profile.name}: {total} samples" + (f" under {args.under!r}" if args.under else "")
    )
    print(f"\n{'incl %':>7}  function (inclusive)")
    for f, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:7.1f}  {f}")
    print(f"\n{'self %':>7}  function (self)")
    for f, n in self_time.most_common(args.top):
        print(f"{100 * n / total:7.1f}  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
