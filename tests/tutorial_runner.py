"""Running a Markdown tutorial as a reader would: its shell blocks in order, in one bash session
(so `cd`, exported variables and background jobs carry from block to block), each block's stated
output checked loosely against what the commands printed.

What a tutorial page may say, and what the runner does with it:
- a ```bash block: its commands run one by one; each must exit 0;
- `<!-- skip-ci: why -->` right above a block: not run (installing, a long-running UI);
- a ```text block after a shell block: that block's stated output. Every line of it, in order,
  must match a line of the real output, loosely: numbers match any number, runs of spaces any
  run of spaces, and `…` anything; a line that is only `...` or `…` stands for lines left out;
- `<!-- check: REGEX in LOW..HIGH -->` after a shell block: REGEX must match its output and its
  first group, read as a number, must lie in [LOW, HIGH] (a key number, kept honest)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from docs_helpers import SHELL, fenced_blocks, shell_commands

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
CHECK = re.compile(r"<!--\s*check:\s*(?P<regex>.+?)\s+in\s+(?P<low>[-+\d.e]+)\.\.(?P<high>[-+\d.e]+)\s*-->")
SKIP = re.compile(r"<!--\s*skip-ci:")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Step:
    line: int  # where the shell block starts in the page
    commands: list[str]
    stated: list[list[str]] = field(default_factory=list)  # the text blocks after it
    checks: list[tuple[str, float, float]] = field(default_factory=list)


def steps(markdown: str) -> list[Step]:
    """The runnable shell blocks of a page, each with the stated outputs and checks after it."""
    events = [(b.line, "block", b) for b in fenced_blocks(markdown)]
    events += [(markdown.count("\n", 0, m.start()) + 1, "check", m) for m in CHECK.finditer(markdown)]
    found: list[Step] = []
    current: Step | None = None
    for _, kind, item in sorted(events, key=lambda e: e[0]):
        if kind == "check":
            if current is None:
                raise ValueError(f"a check before any shell block: {item.group(0)}")
            current.checks.append((item["regex"], float(item["low"]), float(item["high"])))
        elif item.lang in SHELL:
            current = None if SKIP.match(item.comment) else Step(item.line, shell_commands(item.text))
            if current is not None:
                found.append(current)
        elif item.lang == "text" and current is not None:
            current.stated.append(item.text.splitlines())
    return found


def loose(stated: str) -> re.Pattern:
    """A stated output line as a pattern: numbers, space runs and `…` loosened."""
    pattern, last = [], 0
    for m in re.finditer(rf"{NUMBER.pattern}|\s+|…", stated):
        pattern.append(re.escape(stated[last:m.start()]))
        token = m.group(0)
        pattern.append(r"\s+" if token.isspace() else ".*?" if token == "…" else NUMBER.pattern)
        last = m.end()
    pattern.append(re.escape(stated[last:]))
    return re.compile("".join(pattern))


def unmatched(stated: list[str], output: str) -> list[str]:
    """The stated lines not found, in order, in the output (empty: it matches)."""
    lines = [line.strip() for line in ANSI.sub("", output).splitlines()]
    missing, at = [], 0
    for want in (s.strip() for s in stated):
        if not want or want in ("...", "…"):
            continue
        pattern = loose(want)
        hit = next((i for i in range(at, len(lines)) if pattern.search(lines[i])), None)
        if hit is None:
            missing.append(want)
        else:
            at = hit + 1
    return missing


def failed_checks(checks: list[tuple[str, float, float]], output: str) -> list[str]:
    problems = []
    for regex, low, high in checks:
        m = re.search(regex, ANSI.sub("", output))
        if m is None:
            problems.append(f"check {regex!r}: no match")
        elif not low <= float(m.group(1).replace(",", "")) <= high:
            problems.append(f"check {regex!r}: {m.group(1)} outside [{low:g}, {high:g}]")
    return problems


class Shell:
    """One bash session fed command by command; output (stdout and stderr together) per command."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float) -> tuple[int, str]:
        marker = f"__tutorial_done_{uuid.uuid4().hex}__"
        self.process.stdin.write(f"{command}\nprintf '\\n{marker} %s\\n' \"$?\"\n")
        self.process.stdin.flush()
        output, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"{command!r} still running after {timeout:.0f} s:\n{''.join(output)}") from None
            if line is None:
                raise RuntimeError(f"the shell ended during {command!r}:\n{''.join(output)}")
            if line.startswith(marker):
                return int(line.split()[-1]), "".join(output)
            output.append(line)

    def close(self) -> None:
        """Ends the session and whatever it left running (a background server): its whole group,
        which only this session's processes are in (it was started in a session of its own)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=20)
                time.sleep(1)  # its children get the same signal; give them a moment
            except subprocess.TimeoutExpired:
                continue
