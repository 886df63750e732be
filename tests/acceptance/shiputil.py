"""Helpers for the "Ship it" acceptance tests: the repository's deployment files
read the way their tools read them, and the command run the way a user runs it.

Import as ``from shiputil import ...`` (pytest puts ``tests/acceptance`` on
``sys.path``). Small parsers of our own, written for these files: a Dockerfile
(instructions, stages, JSON and shell forms), ``.dockerignore`` patterns, and a
systemd unit (sections with repeated keys).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Variables of the calling shell that would change what a subprocess does.
_DROPPED_PREFIXES = ("REPLICATOR_", "DATABASE_", "PIP_REQUIRE", "PYTHON")
_DROPPED = frozenset({"VIRTUAL_ENV", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def clean_env(**variables: str) -> dict[str, str]:
    """The calling environment without anything that steers the replicator, Python
    or a virtual environment; then ``variables``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)
    }
    env.update(variables)
    return env


def replicator_exe() -> Path:
    """The ``replicator`` console script of the venv running the tests."""
    script = Path(sys.executable).with_name("replicator")
    assert script.exists(), f"no replicator script next to {sys.executable}: install the package"
    return script


def base_python() -> str:
    """The interpreter the test venv was made from (a new venv must not nest in ours)."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result`` if it exited 0, else a failure showing its command and output tail."""
    if result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(str(a) for a in result.args)} exited {result.returncode}\n"
            f"--- stdout (tail)\n{result.stdout[-3000:]}\n"
            f"--- stderr (tail)\n{result.stderr[-3000:]}"
        )
    return result


def make_venv(path: Path) -> Path:
    """A new virtual environment from the base interpreter; returns its bin folder."""
    must(run([base_python(), "-m", "venv", str(path)], timeout=120))
    return path / "bin"


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    raw: str  # the arguments as written (continuations joined)
    line: int  # where it starts, 1-based
    flags: dict[str, str] = field(default_factory=dict)  # --from=build, --chown=...
    args: list[str] = field(default_factory=list)  # after the flags; JSON form if exec
    exec_form: bool = False


@dataclass
class Stage:
    index: int
    image: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction.raw))
        return values


_FLAGGED = frozenset({"COPY", "ADD", "FROM", "RUN", "HEALTHCHECK"})


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions with their continuation lines joined and comment lines dropped
    (as Docker does: a comment line inside a continuation is removed)."""
    start, parts = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        yield start, " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield start, " ".join(p for p in parts if p)


def parse_dockerfile(text: str) -> list[Instruction]:
    out = []
    for number, line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip(), number)
        body = instruction.raw
        if instruction.keyword in _FLAGGED:
            while body.startswith("--"):
                flag, _, body = body.partition(" ")
                name, _, value = flag[2:].partition("=")
                instruction.flags[name] = value
                body = body.strip()
        if body.startswith("["):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
                instruction.args, instruction.exec_form = parsed, True
        if not instruction.exec_form:
            instruction.args = [body] if instruction.keyword == "RUN" else shlex.split(body)
        out.append(instruction)
    return out


def dockerfile_stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            args = instruction.args
            name = args[2] if len(args) >= 3 and args[1].upper() == "AS" else None
            stages.append(Stage(len(stages), args[0], name, []))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
    return stages


def parse_env(raw: str) -> dict[str, str]:
    """``ENV a=1 b="two words"`` or the legacy ``ENV key value``."""
    words = shlex.split(raw)
    if words and "=" not in words[0]:
        return {words[0]: raw.split(None, 1)[1] if len(words) > 1 else ""}
    values = {}
    for word in words:
        key, _, value = word.partition("=")
        values[key] = value
    return values


def healthcheck_command(instruction: Instruction) -> list[str]:
    """The command of ``HEALTHCHECK [options] CMD ...`` (exec form as a list)."""
    body = instruction.raw
    while body.startswith("--"):
        body = body.partition(" ")[2].strip()
    keyword, _, rest = body.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {keyword}: no command"
    rest = rest.strip()
    if rest.startswith("["):
        parsed = json.loads(rest)
        assert isinstance(parsed, list)
        return [str(a) for a in parsed]
    return ["/bin/sh", "-c", rest]


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line of a .dockerignore, in order."""
    rules = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().strip("/")
        pattern = os.path.normpath(pattern)
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def dockerignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``relpath`` out: the last matching rule
    wins, and a rule matching a folder covers everything in it."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit: section -> [(key, value), ...], repeated keys kept in order.

    Comments (``#`` or ``;`` at line start) and blank lines are skipped; a line
    ending in a backslash continues on the next one.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: not 'Key=value' in a section: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str | None:
    """The value in force: the last assignment (an empty one resets a list setting)."""
    values = unit_values(unit, section, key)
    return values[-1] if values else None
