"""Re-materializing a corpus after one added document, against its first materialization, on
the local default: `retro-ops materialize --corpus C --set C` (one process per command, its
steps run in-process), as a user runs it (issue #28: at most 10%).

A fresh home gets a corpus of the first `--chapters` King James New Testament chapters
(`corpora/kjv_nt`, shipped) and a retrieval set over it. The whole chain is materialized once
(documents, chunks, chunk_embeddings, chunk_scores, then retrieval_set, faiss_index), the next
chapter is copied into the corpus folder, and the same command runs again. Each command is timed
from the bench (process start to exit); inside it, each step from Dagster's own STEP_START and
STEP_SUCCESS events, beside the seconds its library call reports. "startup" is process start to
the first step start (Python, imports, the instance, source observation); "between steps" is what
is left inside the runs. A `--warm` pass repeats the two materializations in this very process
(`assets.launch.materialize_partition`, what the CLI calls), the stack imported beforehand: what
a warm local process costs. A `--worker` pass starts a local worker (`retro-ops worker start
--detach`) on a third home and sends both materializations to it through the `retro-ops` front
(`retro_ops.cli.entry`, what the console script runs), checking that the worker ran them: its
re-materialization is reported against its own first one and against the CLI pass's first.

    python bench/incremental.py                  # 259 chapters (all but the last), ~2 min first
    python bench/incremental.py --chapters 40 --warm --worker --json

The machine may be shared: read the ratio measured in one run, with the load average beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    REPO_ROOT, Column, base_parser, environment, log, report_tables, step_spans, write_results,
)

KJV = REPO_ROOT / "corpora" / "kjv_nt"
CORPUS = "bench"
TARGET = 0.10  # issue #28: a re-materialization after one added document costs at most 10% of the first


def _chapters(n: int) -> list[Path]:
    files = sorted(KJV.glob("*.txt"))
    if not 1 <= n < len(files):
        raise SystemExit(f"--chapters must be 1..{len(files) - 1} (one more is the added document)")
    return files[:n + 1]


APP, FRONT = "retro_ops.cli.main", "retro_ops.cli.entry"  # the app itself; the front that may forward


def _cli(env: dict, *args: str, module: str = APP) -> tuple[float, float, str]:
    """(epoch at start, wall seconds, stdout) of one `retro-ops` command."""
    started, clock = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        raise SystemExit(f"retro-ops {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return started, wall, done.stdout


def _breakdown(instance, outcomes: list[dict], started: float, wall: float) -> tuple[dict, list[dict]]:
    """Per-step rows of one materialization and its totals: startup (process start to the first
    step), steps, the rest (between and after steps: run set-up, outcomes, exit)."""
    steps = []
    for outcome in outcomes:
        library = {a["asset"]: a["metadata"].get("seconds") for a in outcome["assets"]}
        new = {a["asset"]: a["metadata"].get("newly_embedded", a["metadata"].get(
            "new_chunks", a["metadata"].get("new_documents", a["metadata"].get("newly_scored"))))
            for a in outcome["assets"]}
        for row in step_spans(instance, outcome["run_id"]):
            steps.append({**row, "library_s": library.get(row["step"]), "new": new.get(row["step"])})
    first = min(s["start"] for s in steps) if steps else started
    in_steps = sum(s["step_s"] for s in steps)
    totals = {"wall_s": wall, "startup_s": first - started, "steps_s": in_steps,
              "rest_s": wall - (first - started) - in_steps}
    return totals, steps


def _corpus(env: dict, folder: Path, files: list[Path]) -> None:
    """The corpus (all chapters but the last) and a retrieval set over it, through the CLI."""
    folder.mkdir()
    for f in files[:-1]:
        shutil.copy(f, folder / f.name)
    _cli(env, "corpus", "add", CORPUS, str(folder), "--json")
    _cli(env, "retrieval-set", "create", CORPUS, "--corpus", CORPUS, "--json")


def _materialize_twice(env: dict, folder: Path, files: list[Path], path: str, short: str, *,
                       module: str = APP, launched_by: str = "cli") -> tuple[list[dict], list[dict]]:
    """`retro-ops materialize --corpus C --set C`, then the last chapter added and again; each
    run checked to be tagged `launched_by` (who ran it)."""
    from assets.instance import dagster_instance
    from retro_ops.settings import Settings

    settings = Settings(home=Path(env["RETRO_OPS_HOME"]))
    rows, steps = [], []
    for label in ("first", "after one added document"):
        if label != "first":
            shutil.copy(files[-1], folder / files[-1].name)
        load = os.getloadavg()[0]
        log(f"{short}: {label}")
        started, wall, stdout = _cli(env, "materialize", "--corpus", CORPUS, "--set", CORPUS, "--json",
                                     module=module)
        outcomes = json.loads(stdout)
        with dagster_instance(settings) as instance:
            tags = {instance.get_run_by_id(o["run_id"]).tags.get("retro_ops/launched_by") for o in outcomes}
            if tags != {launched_by}:
                raise SystemExit(f"{short}: runs tagged {sorted(tags)}, not {launched_by}")
            totals, per_step = _breakdown(instance, outcomes, started, wall)
        rows.append({"path": path, "materialization": label, **totals,
                     "load_avg_1min": load, "load_avg_after": os.getloadavg()[0]})
        steps += [{"path": short, "materialization": label, **s} for s in per_step]
    return rows, steps


def cli_pass(root: Path, env: dict, files: list[Path]) -> tuple[list[dict], list[dict]]:
    """First materialization and re-materialization through the CLI, each its own process."""
    _corpus(env, root / "corpus", files)
    return _materialize_twice(env, root / "corpus", files, "CLI (a process per command)", "CLI")


def worker_pass(root: Path, env: dict, files: list[Path]) -> tuple[list[dict], list[dict]]:
    """The same through the front, served by a local worker started on a home of its own."""
    home = root / "worker_home"
    env = {k: v for k, v in env.items() if k != "RETRO_OPS_WORKER"}
    env.update(RETRO_OPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    _corpus(env, root / "worker_corpus", files)
    log("worker: starting")
    _cli(env, "worker", "start", "--detach", "--json")
    try:
        return _materialize_twice(env, root / "worker_corpus", files, "CLI front, served by a worker", "worker",
                                  module=FRONT, launched_by="cli-worker")
    finally:
        _cli(env, "worker", "stop", "--json")


def warm_pass(root: Path, files: list[Path]) -> tuple[list[dict], list[dict]]:
    """The same two materializations in this process, the stack imported first."""
    from dataclasses import asdict

    import assets.definitions  # noqa: F401  the imports a warm process has already paid
    from assets.launch import materialize_corpus, materialize_retrieval_set
    from assets.instance import dagster_instance
    from retro_ops.catalog import Catalog
    from retro_ops.settings import HOME_ENV, Settings

    settings = Settings(home=root / "warm_home")
    settings.ensure_dirs()
    os.environ[HOME_ENV] = str(settings.home)
    folder = root / "warm_corpus"
    folder.mkdir()
    for f in files[:-1]:
        shutil.copy(f, folder / f.name)
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    catalog.add_corpus(CORPUS, str(folder))
    catalog.create_retrieval_set(CORPUS, [CORPUS])
    catalog.close()
    rows, steps = [], []
    with dagster_instance(settings) as instance:
        for label in ("first", "after one added document"):
            if label != "first":
                shutil.copy(files[-1], folder / files[-1].name)
            load = os.getloadavg()[0]
            log(f"warm process: {label}")
            started, clock = time.time(), time.perf_counter()
            outcomes = [materialize_corpus(instance, CORPUS), materialize_retrieval_set(instance, CORPUS)]
            wall = time.perf_counter() - clock
            assert all(o.success for o in outcomes), [o.error for o in outcomes]
            totals, per_step = _breakdown(instance, [asdict(o) for o in outcomes], started, wall)
            rows.append({"path": "warm process (in-process runs)", "materialization": label, **totals,
                         "load_avg_1min": load, "load_avg_after": os.getloadavg()[0]})
            steps += [{"path": "warm", "materialization": label, **s} for s in per_step]
    return rows, steps


def _ratios(rows: list[dict]) -> None:
    """Each re-materialization against its own path's first one and against the CLI's first
    (what a user without a worker waits for the first time)."""
    cli_first = rows[0]["wall_s"]
    for first, again in zip(rows[::2], rows[1::2]):
        again["ratio"] = again["wall_s"] / first["wall_s"]
        again["met"] = again["ratio"] <= TARGET
        again["ratio_to_cli_first"] = again["wall_s"] / cli_first


def main() -> None:
    parser = base_parser(__doc__, "unused: the bench makes fresh homes in a temporary folder")
    parser.add_argument("--chapters", type=int, default=259,
                        help="KJV NT chapters in the corpus at first (259 of 260: the last is added)")
    parser.add_argument("--warm", action="store_true",
                        help="also the two materializations in this process (a warm local process)")
    parser.add_argument("--worker", action="store_true",
                        help="also the two materializations through the CLI front, served by a local worker")
    parser.add_argument("--json", action="store_true", help="print the results JSON on stdout, not tables")
    args = parser.parse_args()
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_PROFILE",
                "RETRO_OPS_DAGSTER_STORAGE_URL"):
        os.environ.pop(var, None)  # every store under the fresh homes
    files = _chapters(args.chapters)
    root = Path(tempfile.mkdtemp(prefix="retro-ops-incremental-"))
    env = {**os.environ, "RETRO_OPS_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "home" / "dagster"),
           "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        rows, steps = cli_pass(root, env, files)
        if args.worker:
            more_rows, more_steps = worker_pass(root, env, files)
            rows, steps = rows + more_rows, steps + more_steps
        if args.warm:
            more_rows, more_steps = warm_pass(root, files)
            rows, steps = rows + more_rows, steps + more_steps
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _ratios(rows)
    meta = {"chapters": args.chapters, "added": files[-1].name, "target_ratio": TARGET, **environment()}
    if args.json:
        path = write_results("incremental", meta, rows + [{"table": "steps", **s} for s in steps])
        print(path.read_text())
        return
    for s in steps:
        s.pop("start"), s.pop("end")
    secs = [Column(k, h, "{:.1f}") for k, h in (("wall_s", "wall (s)"), ("startup_s", "startup (s)"),
                                                ("steps_s", "in steps (s)"), ("rest_s", "rest (s)"))]
    report_tables("incremental", [
        ("first materialization vs after one added document", [
            Column("path", "path"), Column("materialization", "materialization"), *secs,
            Column("ratio", "ratio to first", "{:.1%}"), Column("met", f"<= {TARGET:.0%}"),
            Column("ratio_to_cli_first", "ratio to CLI first", "{:.1%}"),
            Column("load_avg_1min", "load avg before", "{:.1f}"),
            Column("load_avg_after", "load avg after", "{:.1f}")], rows),
        ("per step (Dagster STEP_START -> STEP_SUCCESS)", [
            Column("path", "path"), Column("materialization", "materialization"), Column("step", "step"),
            Column("step_s", "step (s)", "{:.2f}"), Column("library_s", "library call (s)", "{:.2f}"),
            Column("new", "new rows")], steps),
    ], meta, notes=[f"CPU: {meta['processor']} ({meta['cpu_flags']}), {meta['cpu_count']} cores. "
                    "Shared machine: compare ratios from one run, with the load average beside them."])


if __name__ == "__main__":
    main()
