"""Shared helpers for the benchmark scripts: timing, corpus loading, table and JSON output.

The scripts are run as files (`python bench/chunking.py`), so this module is imported as
`_common` from the bench folder that Python puts first on sys.path.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
CORPORA = {
    "sotu": REPO_ROOT / "corpora" / "sotu" / "*.jsonl",
    "moby_dick": REPO_ROOT / "corpora" / "moby_dick" / "*.txt",
}

if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


@dataclass(frozen=True)
class Timing:
    """One timed call: wall seconds and process CPU seconds (all threads, Rust and BLAS too)."""

    wall_s: float
    cpu_s: float

    @property
    def busy_cores(self) -> float:
        """CPU time / wall time: how many cores the call kept busy on average."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")


def time_call(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Timing(wall, cpu), result


def best_of(fn: Callable[[], Any], runs: int, warmup: int = 0) -> tuple[Timing, Any]:
    """The fastest (by wall time) of `runs` calls after `warmup` untimed ones, and its result."""
    for _ in range(warmup):
        fn()
    best: tuple[Timing, Any] | None = None
    for _ in range(max(1, runs)):
        timing, result = time_call(fn)
        if best is None or timing.wall_s < best[0].wall_s:
            best = (timing, result)
        del result
    assert best is not None
    return best


def load_documents(corpora: Iterable[str]) -> list[tuple[str, str]]:
    """(doc_id, text) of the unique documents of the named embedded corpora, in reading order."""
    from retro_ops.corpus import collect_documents, read_corpus

    def raw():
        for name in corpora:
            yield from read_corpus(CORPORA[name])

    return [(doc.doc_id, doc.text) for doc in collect_documents(raw()).documents]


def step_spans(instance, run_id: str) -> list[dict[str, Any]]:
    """Each finished step of a Dagster run, from Dagster's own event timestamps: its key, start and
    end (epoch seconds), `step_s` (STEP_START -> STEP_SUCCESS or STEP_FAILURE) and `ok`."""
    started, rows = {}, []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            started[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            rows.append({"step": entry.step_key, "start": started[entry.step_key], "end": entry.timestamp,
                         "step_s": entry.timestamp - started[entry.step_key],
                         "ok": event.event_type_value == "STEP_SUCCESS"})
    return rows


def parse_int_list(text: str) -> list[int]:
    """argparse type for "8,32,64"."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def environment() -> dict[str, Any]:
    """What the numbers depend on: cores, thread settings, library versions."""
    import tokenizers
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "processor": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset: true)"),
        "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "(unset: all cores)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
          "amx_int8", "amx_bf16")


def _cpu_flags() -> str:
    """The SIMD features the numbers depend on, as the kernel reports them (read, never assumed)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in _FLAGS if f in have) or "none of " + " ".join(_FLAGS)
    except OSError:
        pass
    return "unknown"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{}"  # str.format spec applied to the row's value

    def render(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        return self.fmt.format(value)


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(c.render(row) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def write_results(name: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """bench/results/<name>.json: the rows with what they depend on (meta) and when."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "meta": meta, "rows": rows}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def report(name: str, columns: Sequence[Column], rows: list[dict[str, Any]],
           meta: dict[str, Any], notes: Sequence[str] = ()) -> Path:
    """Print the table (and notes) to stdout; write rows + meta to bench/results/<name>.json."""
    print(markdown_table(columns, rows))
    for note in notes:
        print(f"\n{note}")
    path = write_results(name, meta, rows)
    print(f"\nrows written to {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return path


def report_tables(name: str, tables: Sequence[tuple[str, Sequence[Column], list[dict[str, Any]]]],
                  meta: dict[str, Any], notes: Sequence[str] = ()) -> Path:
    """Like `report`, for several tables: print each under a `### title` heading (then the
    notes); write every row to bench/results/<name>.json, each tagged with its table's title."""
    rows: list[dict[str, Any]] = []
    for title, columns, table_rows in tables:
        print(f"### {title}\n\n{markdown_table(columns, table_rows)}\n")
        rows += [{"table": title, **row} for row in table_rows]
    for note in notes:
        print(note, end="\n\n")
    path = write_results(name, meta, rows)
    print(f"rows written to {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return path


_STARTED = time.perf_counter()


def elapsed() -> float:
    """Seconds since the benchmark process started (imported this module)."""
    return time.perf_counter() - _STARTED


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server a benchmark starts."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    """Progress on stderr, stamped with seconds since the benchmark started."""
    print(f"[{elapsed():7.1f}s] {message}", file=sys.stderr, flush=True)


def base_parser(doc: str, home_help: str):
    """An argparse parser from a script's docstring (first paragraph = description, the rest =
    epilog) with the `--home` option every retro-ops benchmark takes."""
    import argparse

    head, _, tail = doc.partition("\n\n")
    parser = argparse.ArgumentParser(description=head, epilog=tail,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("RETRO_OPS_HOME", "./.retro_ops")),
                        help=f"{home_help} ($RETRO_OPS_HOME or ./.retro_ops)")
    return parser
