"""Progress of long commands, on stderr: bars on a terminal, plain lines anywhere else.

A log file, CI or `nohup` gets a line when each run and each step starts and ends, and lines
within long steps (done/total, elapsed, rate, time left) each time another EVERY_PERCENT of the
work is done and at least every HEARTBEAT_S, so a log always shows where a run is. Both
renderers take what the Dagster layer reports: `tracker(partition, asset, label)` from the
assets (assets/launch.py `ReportedProgress`) and `step(partition, step, state)` from the
launcher's step listener.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Report = Callable[[int, int], None]
EVERY_PERCENT = 10  # a line each time a tracked step passes another 10% of its work...
MIN_GAP_S = 5.0  # ...unless the step's last line is younger than this (fast steps stay short)
HEARTBEAT_S = 30.0  # and a line at least this often while any step runs, tracked or not


def duration(seconds: float) -> str:
    """`0.4 s`, `42 s`, `3:07`, `1:02:07`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _where(partition: str, asset: str) -> str:
    return f"{partition} {asset}" if partition else asset


@dataclass
class _Step:
    started: float
    last_line: float
    label: str = ""
    done: int = 0
    total: int = 0
    first_done: int | None = None  # where tracking began (a resumed training starts past 0)
    first_at: float = 0.0
    bucket: int = 0


class LineProgress:
    """Plain, rate-limited lines for a log. Use as a context manager: it runs the heartbeat
    thread that speaks for steps which report nothing themselves (or not often enough)."""

    def __init__(self, console: Console, *, every_percent: int = EVERY_PERCENT, min_gap_s: float = MIN_GAP_S,
                 heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.every_percent, self.min_gap_s = console, every_percent, min_gap_s
        self.heartbeat_s, self.clock = heartbeat_s, clock
        self._steps: dict[tuple[str, str], _Step] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LineProgress:
        self._thread = threading.Thread(target=self._beat_until_stopped, name="progress-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _print(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False,
                           soft_wrap=True)

    def run(self, index: int, count: int, partition: str, assets: list[str]) -> None:
        with self._lock:
            self._print(f"run {index}/{count}: {partition} ({', '.join(assets)})")

    def step(self, partition: str, step: str, state: str) -> None:
        now = self.clock()
        with self._lock:
            if state == "started":
                self._steps[(partition, step)] = _Step(started=now, last_line=now)
                self._print(f"{_where(partition, step)}: started")
                return
            found = self._steps.pop((partition, step), None)
            took = f" after {duration(now - found.started)}" if found else ""
            if found and found.total:
                rate = self._rate(found, now)
                took += f" ({found.label} {found.done}/{found.total}{f', {rate:.3g}/s' if rate else ''})"
            self._print(f"{_where(partition, step)}: {state}{took}")

    def tracker(self, partition: str, asset: str, label: str) -> Report:
        key = (partition, asset)

        def report(done: int, total: int) -> None:
            now = self.clock()
            with self._lock:
                step = self._steps.setdefault(key, _Step(started=now, last_line=now))
                if step.first_done is None or step.label != label:
                    step.first_done, step.first_at, step.bucket = done, now, 0
                step.label, step.done, step.total = label, done, total
                if (self._bucket(done, total) > step.bucket and now - step.last_line >= self.min_gap_s
                        and done < total):  # the end has the step's own line
                    self._line(key, step, now)

        return report

    def beat(self) -> None:
        """A line for every step that has been quiet for HEARTBEAT_S (the thread calls this)."""
        now = self.clock()
        with self._lock:
            for key, step in self._steps.items():
                if now - step.last_line >= self.heartbeat_s:
                    self._line(key, step, now)

    def _bucket(self, done: int, total: int) -> int:
        return 100 * done // total // self.every_percent if total else 0

    @staticmethod
    def _rate(step: _Step, now: float) -> float:
        """Work per second since tracking began (a resumed run counts from where it resumed)."""
        return (step.done - (step.first_done or 0)) / (now - step.first_at) if now > step.first_at else 0.0

    def _line(self, key: tuple[str, str], step: _Step, now: float) -> None:
        step.last_line, step.bucket = now, self._bucket(step.done, step.total)
        elapsed = f"{duration(now - step.started)} elapsed"
        if not step.total:
            self._print(f"{_where(*key)}: running, {elapsed}")
            return
        parts = [f"{step.label} {step.done}/{step.total} ({100 * step.done // step.total}%)", elapsed]
        rate = self._rate(step, now)
        if rate > 0:
            parts += [f"{rate:.3g}/s", f"~{duration((step.total - step.done) / rate)} left"]
        self._print(f"{_where(*key)}: {', '.join(parts)}")

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(min(5.0, self.heartbeat_s)):
            self.beat()


class BarProgress:
    """A rich progress bar per step on a terminal; a step that reports no progress pulses."""

    def __init__(self, console: Console, transient: bool) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bars = Progress(*columns, console=console, transient=transient)
        self._tasks: dict[tuple[str, str], int] = {}
        self._totals: dict[int, int] = {}

    def __enter__(self) -> BarProgress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.__exit__(*exc)

    def run(self, index: int, count: int, partition: str, assets: list[str]) -> None:
        pass  # the bars say it

    def _task(self, partition: str, asset: str) -> int:
        if (partition, asset) not in self._tasks:
            self._tasks[(partition, asset)] = self._bars.add_task(_where(partition, asset), total=None)
        return self._tasks[(partition, asset)]

    def step(self, partition: str, step: str, state: str) -> None:
        task = self._task(partition, step)
        if state == "failed":
            self._bars.update(task, description=f"{_where(partition, step)} (failed)")
        if state != "started":
            total = self._totals.get(task) or 1
            self._bars.update(task, total=total, completed=total)
            self._bars.stop_task(task)

    def tracker(self, partition: str, asset: str, label: str) -> Report:
        task = self._task(partition, asset)
        self._bars.update(task, description=f"{_where(partition, asset)}: {label}")

        def report(done: int, total: int) -> None:
            self._totals[task] = max(total, done, 1)
            self._bars.update(task, completed=done, total=self._totals[task])

        return report


def progress_for(console: Console, *, transient: bool) -> LineProgress | BarProgress:
    """Bars where the console is a terminal, plain lines where it is a file or a pipe."""
    return BarProgress(console, transient) if console.is_terminal else LineProgress(console)
