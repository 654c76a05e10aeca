"""Per-step overhead of Dagster's executors on one small corpus partition, in the same run: the
in-process executor (the local default: `retro-ops materialize`, and the same call in a process
that ran one before), a launched run (`dagster asset materialize -m assets.definitions`, what
the UI and the automation daemon start: one process per run, its steps in-process, the code
location's default), the multiprocess executor (the same with RETRO_OPS_EXECUTOR=multiprocess:
every step a fresh process) and Celery with one warm `dagster-celery`
worker (`assets.cluster.CeleryWorkers`; each step a task run inside the worker's pool process).

A fresh home gets a corpus of `--chapters` Moby-Dick chapters, materialized once in-process, so
that every measured run re-materializes documents, chunks and chunk_embeddings with nothing new
to chunk or embed: the steps are (nearly) all overhead. Each executor runs that selection
`--runs` times; the best run counts (Celery's first run also warms its worker: the embedder is
loaded in the pool process once and kept, `EmbedderResource.load`).

Two measures per executor:
- in-step overhead: from a step's first event (a multiprocess step's STEP_WORKER_STARTING, a
  Celery step's submission, an in-process STEP_START) to its STEP_SUCCESS, minus the seconds
  its library call reports;
- run overhead per step: the run's wall time (its process, start to exit; for the warm process,
  the call) minus the library seconds, divided by the steps.

    python bench/step_overhead.py                      # needs RabbitMQ (DAGSTER_CELERY_BROKER_URL)
    python bench/step_overhead.py --no-celery --chapters 2

The machine may be shared: compare executors within one run, with the load average beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import REPO_ROOT, Column, base_parser, environment, log, report_tables

MOBY = REPO_ROOT / "corpora" / "moby_dick"
CORPUS = "bench"
SELECT = ["documents", "chunks", "chunk_embeddings"]
TARGET_S = 2.0  # issue #28: at most 2 s of overhead per step on a warm worker


def _step_rows(instance, run_id: str) -> list[dict]:
    """Per step: first event, STEP_SUCCESS, and the library seconds its materialization reports."""
    first, done, library = {}, {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        first.setdefault(entry.step_key, entry.timestamp)
        if event.event_type_value == "STEP_SUCCESS":
            done[entry.step_key] = entry.timestamp
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            md = event.event_specific_data.materialization.metadata
            if "seconds" in md:
                library[entry.step_key] = md["seconds"].value
    return [{"step": k, "step_s": done[k] - first[k], "library_s": library.get(k, 0.0),
             "in_step_overhead_s": done[k] - first[k] - library.get(k, 0.0)} for k in done]


def _summary(executor: str, instance, run_id: str, wall: float, load: float) -> tuple[dict, list[dict]]:
    steps = _step_rows(instance, run_id)
    library = sum(s["library_s"] for s in steps)
    row = {"executor": executor, "steps": len(steps), "run_wall_s": wall, "library_s": library,
           "in_step_overhead_s": sum(s["in_step_overhead_s"] for s in steps) / max(len(steps), 1),
           "run_overhead_per_step_s": (wall - library) / max(len(steps), 1), "load_avg_1min": load}
    row["met"] = row["in_step_overhead_s"] <= TARGET_S
    return row, [{"executor": executor, **s} for s in steps]


def _best(runs: list[tuple[dict, list[dict]]]) -> tuple[dict, list[dict]]:
    return min(runs, key=lambda r: r[0]["run_wall_s"])


def main() -> None:
    parser = base_parser(__doc__, "unused: the bench makes a fresh home in a temporary folder")
    parser.add_argument("--chapters", type=int, default=3, help="Moby-Dick chapters 1..N (3)")
    parser.add_argument("--runs", type=int, default=2, help="runs per executor, best kept (2)")
    parser.add_argument("--no-celery", action="store_true", help="leave out Celery (no broker here)")
    parser.add_argument("--json", action="store_true", help="print the results JSON on stdout, not tables")
    args = parser.parse_args()
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_PROFILE",
                "RETRO_OPS_DAGSTER_STORAGE_URL"):
        os.environ.pop(var, None)

    from assets.cluster import BROKER_ENV, QUEUE_ENV, CeleryWorkers
    from assets.definitions import EXECUTOR_ENV
    from assets.launch import CELERY_LOCATION, LOCAL_LOCATION, launch_runs, materialize_corpus
    from assets.instance import dagster_instance
    from retro_ops.catalog import Catalog
    from retro_ops.settings import HOME_ENV, Settings

    root = Path(tempfile.mkdtemp(prefix="retro-ops-steps-"))
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    queue = f"retro_ops_steps_{uuid.uuid4().hex[:8]}"
    os.environ.update({HOME_ENV: str(settings.home), "DAGSTER_HOME": str(settings.dagster_home), QUEUE_ENV: queue})
    os.environ.setdefault(BROKER_ENV, "pyamqp://guest:guest@127.0.0.1:5672//")
    folder = root / "corpus"
    folder.mkdir()
    for n in range(1, args.chapters + 1):
        shutil.copy(MOBY / f"chapter_{n}.txt", folder / f"chapter_{n}.txt")
    Catalog.open(settings.catalog_url, home=settings.home).add_corpus(CORPUS, str(folder))
    rows, steps = [], []
    try:
        with dagster_instance(settings) as instance:
            log("first materialization (untimed)")
            assert materialize_corpus(instance, CORPUS, selection=SELECT).success

            def in_process(label: str) -> tuple[dict, list[dict]]:
                load, clock = os.getloadavg()[0], time.perf_counter()
                outcome = materialize_corpus(instance, CORPUS, selection=SELECT)
                assert outcome.success, outcome.error
                return _summary(label, instance, outcome.run_id, time.perf_counter() - clock, load)

            def cli(label: str) -> tuple[dict, list[dict]]:
                load, clock = os.getloadavg()[0], time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "retro_ops.cli.main", "materialize", "--corpus", CORPUS,
                                       "--select", ",".join(SELECT), "--json"],
                                      cwd=REPO_ROOT, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
                assert done.returncode == 0, done.stderr[-2000:]
                run_id = json.loads(done.stdout)[0]["run_id"]
                return _summary(label, instance, run_id, time.perf_counter() - clock, load)

            def launched(label: str, location, env: dict | None = None) -> tuple[dict, list[dict]]:
                load = os.getloadavg()[0]
                [run] = launch_runs(settings, ",".join(SELECT), [CORPUS], location=location, env=env)
                assert run.success, run.output
                return _summary(label, instance, run.run_id, run.wall_s, load)

            plans = [("in-process, warm process (the call the CLI makes)", lambda lb: in_process(lb)),
                     ("in-process, CLI (a process per command)", lambda lb: cli(lb)),
                     ("launched run, in-process (the location's default: a process per run)",
                      lambda lb: launched(lb, LOCAL_LOCATION)),
                     ("multiprocess (a process per step)",
                      lambda lb: launched(lb, LOCAL_LOCATION, {EXECUTOR_ENV: "multiprocess"}))]
            for label, run in plans:
                log(label)
                best = _best([run(label) for _ in range(args.runs)])
                rows.append(best[0])
                steps += best[1]
            if not args.no_celery:
                label = "Celery, 1 warm worker (a task per step)"
                log(label)
                with CeleryWorkers(queue, count=1, logs=root / "workers", prefix=queue, lifetime_s=1800):
                    best = _best([launched(label, CELERY_LOCATION) for _ in range(max(args.runs, 2))])
                rows.append(best[0])
                steps += best[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {"chapters": args.chapters, "select": SELECT, "runs": args.runs, "target_s": TARGET_S, **environment()}
    if args.json:
        from _common import write_results

        print(write_results("step_overhead", meta, rows + [{"table": "steps", **s} for s in steps]).read_text())
        return
    report_tables("step_overhead", [
        ("per-step overhead by executor (best run)", [
            Column("executor", "executor"), Column("steps", "steps"),
            Column("run_wall_s", "run wall (s)", "{:.1f}"), Column("library_s", "library (s)", "{:.2f}"),
            Column("in_step_overhead_s", "in-step overhead / step (s)", "{:.2f}"),
            Column("run_overhead_per_step_s", "run overhead / step (s)", "{:.2f}"),
            Column("met", f"in-step <= {TARGET_S:.0f} s"), Column("load_avg_1min", "load avg", "{:.1f}")], rows),
        ("per step (best run)", [
            Column("executor", "executor"), Column("step", "step"), Column("step_s", "step (s)", "{:.2f}"),
            Column("library_s", "library (s)", "{:.2f}"),
            Column("in_step_overhead_s", "overhead (s)", "{:.2f}")], steps),
    ], meta, notes=[f"CPU: {meta['processor']} ({meta['cpu_flags']}), {meta['cpu_count']} cores. "
                    "Shared machine: compare executors within one run, with the load average beside them."])


if __name__ == "__main__":
    main()
