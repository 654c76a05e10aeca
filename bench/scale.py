"""Scale-out: chunk + embed + index wall time of one corpus at 1 shard vs N shards, through
Dagster (each shard its own run, steps in-process in it: the local location's executor), and Dagster's overhead
per materialization (seconds beyond the library call it wraps).

Each configuration gets a fresh home and the same documents; the library path (no Dagster, one
process) runs in the same process as the baseline. Overhead per asset = a run's wall time (its
`dagster asset materialize` process, start to exit) minus the library seconds its assets report,
divided by its assets; and, inside the run, step time minus library time per asset. The machine
may be shared: the ratio measured in one run is the number to read, with `load_avg_1min` beside it.

    python bench/scale.py --chapters 24 --shards 2
    python bench/scale.py --chapters 3 --celery      # a quick check that the Celery route works
    python bench/scale.py --chapters 135 --editions kjv_nt,asv_nt,web_nt,sotu --celery   # ~19k chunks

With --celery the sharded configurations are Dagster's Celery executor (deploy/celery) with one
and then two `dagster-celery` workers started here (`assets.cluster.CeleryWorkers`, a queue of
their own), both over the same shard runs (--shards, at least 2: the two workers' concurrent
steps) and both with the same cap on every worker's threads (--threads-per-worker: the workers'
OMP/MKL/Rayon threads and `embedding_shard`'s `torch_threads` run config). Each row reports the
threads torch ran with inside the steps and the cores they kept busy (CPU / wall seconds), so a
cap that does not hold shows. After chunk + embed the index is built through the same workers
(train, fill per shard, merge: `merge_s`, shard index bytes), and the JSON keeps what
bench/scale_projection.py scales up: chunks, per-step overhead, event-log entries per step and
run, LanceDB fragments and the seconds of one 512-vector commit. The broker is
DAGSTER_CELERY_BROKER_URL (default the machine's RabbitMQ). Dagster's storage and the catalog stay
SQLite under each fresh home (one machine: every worker reaches it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _common import REPO_ROOT, CORPORA, Column, base_parser, environment, log, report_tables, step_spans

STAGES = ("chunk_embed_s", "index_s", "total_s")


def _edition_files(name: str) -> list[Path]:
    """The files of shipped corpus `name` that the corpus readers read (.txt, .jsonl, ...)."""
    from retro_ops.corpus.readers import SUPPORTED_SUFFIXES

    folder = REPO_ROOT / "corpora" / name
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def _corpus(root: Path, chapters: int, editions: list[str]) -> Path:
    """Moby-Dick chapters 1..`chapters`, and every file of each shipped corpus in `editions`
    (`corpora/<name>/`, named `<name>_<file>` so that no two collide)."""
    folder = root / "corpus"
    folder.mkdir()
    source = Path(str(CORPORA["moby_dick"])).parent
    if not (source / f"chapter_{chapters}.txt").exists():
        raise SystemExit(f"--chapters {chapters}: {source} has no chapter_{chapters}.txt (Moby-Dick has 135)")
    for n in range(1, chapters + 1):
        shutil.copy(source / f"chapter_{n}.txt", folder / f"chapter_{n}.txt")
    for name in editions:
        for path in _edition_files(name):
            shutil.copy(path, folder / f"{name}_{path.name}")
    return folder


def parse_editions(text: str) -> list[str]:
    """argparse type: shipped corpora, e.g. "kjv_nt,asv_nt,web_nt,sotu"."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    missing = [n for n in names if not _edition_files(n)]
    if missing:
        raise argparse.ArgumentTypeError(f"no shipped corpus of readable files named {', '.join(missing)} "
                                         f"under {REPO_ROOT / 'corpora'}")
    return names


def _home(root: Path, name: str, corpus: Path):
    from retro_ops.catalog import Catalog
    from retro_ops.settings import Settings

    settings = Settings(home=root / name)
    settings.ensure_dirs()
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    catalog.add_corpus("bench", str(corpus))
    catalog.create_retrieval_set("bench", ["bench"])
    return settings, catalog


class LoadSampler:
    """The 1-minute load average every few seconds in a background thread, so each configuration
    reports the load it ran under (mean and max over its own time span), not only the load at the end."""

    def __init__(self, every: float = 5.0):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), os.getloadavg()[0]))
            self._stop.wait(every)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, started: float, ended: float) -> dict[str, float]:
        inside = [load for at, load in self.samples if started <= at <= ended] or [os.getloadavg()[0]]
        return {"load_mean": sum(inside) / len(inside), "load_max": max(inside)}


def library_path(root: Path, corpus: Path, factory: str) -> dict:
    """The baseline: the library calls the assets wrap, one process, no Dagster, torch on every core."""
    import torch

    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder
    from retro_ops.features.pipeline import chunk_corpus, embed_corpus, ingest_documents
    from retro_ops.features.store import FeatureStore
    from retro_ops.retrieval.index.build import IndexConfig
    from retro_ops.retrieval.index.route import index_retrieval_set
    from retro_ops.retrieval.sets import build_retrieval_set_version

    settings, catalog = _home(root, "library", corpus)
    store, embedder = FeatureStore(settings.lancedb_uri), Embedder()
    chunker = Chunker(embedder.tokenizer)
    ingest_documents(catalog, store, "bench")
    started, cpu = time.perf_counter(), time.process_time()
    chunks = chunk_corpus(catalog, store, chunker, "bench")
    embed_corpus(catalog, store, embedder, "bench")
    middle, cpu = time.perf_counter(), time.process_time() - cpu
    build_retrieval_set_version(catalog, store, "bench", embedder.space)
    index_retrieval_set(catalog, store, settings.indices_dir, "bench", embedder.space.dim,
                        config=IndexConfig(factory=factory))
    done = time.perf_counter()
    return {"path": "library, 1 process", "shards": 1, "chunks": chunks.chunks,
            "torch_threads": torch.get_num_threads(), "busy_cores": cpu / (middle - started),
            "chunk_embed_s": middle - started, "index_s": done - middle, "total_s": done - started}


def _asset_metadata(instance, run_id: str) -> dict[str, dict]:
    """asset -> the metadata (plain values) of its materialization in a run: `seconds` (its
    library call), `cpu_seconds`, `torch_threads` (what torch reported inside the step), `chunks`..."""
    found = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
            done = event.event_specific_data.materialization
            found[done.asset_key.to_user_string()] = {k: v.value for k, v in done.metadata.items()}
    return found


def step_rows(instance, runs, config: str) -> list[dict]:
    """Per asset of each run: library seconds, Dagster step seconds and what a step adds (in the
    step, and per asset over the run's whole process), the threads torch reported and the cores
    the step kept busy (CPU / wall seconds), and the event-log entries the step and the run wrote
    (every entry is a row written to the event log: Postgres in a cluster)."""
    rows = []
    for run in runs:
        steps = {r["step"]: r["step_s"] for r in step_spans(instance, run.run_id) if r["ok"]}
        metadata = _asset_metadata(instance, run.run_id)
        events = Counter(entry.step_key or "" for entry in instance.all_logs(run.run_id))
        library = sum(m["seconds"] for m in metadata.values())
        for asset, m in metadata.items():
            rows.append({"config": config, "partition": run.partition, "asset": asset, "chunks": m.get("chunks"),
                         "torch_threads": m.get("torch_threads", "-"), "library_s": m["seconds"],
                         "busy_cores": m["cpu_seconds"] / m["seconds"] if m.get("cpu_seconds") else None,
                         "step_s": steps[asset], "in_step_overhead_s": steps[asset] - m["seconds"],
                         "run_overhead_per_asset_s": (run.wall_s - library) / len(metadata),
                         "step_events": events[asset], "run_events": events[""], "run_wall_s": run.wall_s})
    return rows


def _ok(runs: list) -> list:
    assert all(r.success for r in runs), [r.output for r in runs if not r.success]
    return runs


def dagster_path(root: Path, corpus: Path, n_shards: int, factory: str) -> tuple[dict, list[dict]]:
    import dagster as dg

    from assets.definitions import ALL_ASSETS, default_resources
    from assets.instance import dagster_instance, ensure_partition
    from assets.launch import FEATURES_JOB, INDEX_JOB, launch_shards, materialize_corpus
    from assets.partitions import RETRIEVAL_SET_PARTITIONS
    from assets.sharded import sharded_assets
    from retro_ops.settings import HOME_ENV

    settings, _ = _home(root, f"shards{n_shards}", corpus)
    os.environ[HOME_ENV] = str(settings.home)  # what the resources (and shard processes) resolve
    instance = dagster_instance(settings)
    ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, "bench")
    assert materialize_corpus(instance, "bench", selection=["documents"]).success
    assets = [*ALL_ASSETS, *sharded_assets(n_shards)]

    def materialize(name: str, config: dict | None = None) -> None:
        run_config = {"ops": {name: {"config": config}}} if config else None
        result = dg.materialize(assets, instance=instance, partition_key="bench", selection=[name],
                                resources=default_resources(), run_config=run_config)
        assert result.success

    started = time.perf_counter()
    feature_runs = launch_shards(settings, FEATURES_JOB, "bench", n_shards)
    middle = time.perf_counter()
    assert all(r.success for r in feature_runs), [r.output for r in feature_runs if not r.success]
    materialize("retrieval_set")
    materialize("index_training", {"factory": factory})
    index_runs = launch_shards(settings, INDEX_JOB, "bench", n_shards)
    assert all(r.success for r in index_runs), [r.output for r in index_runs if not r.success]
    materialize("sharded_faiss_index", {"factory": factory})
    done = time.perf_counter()

    overhead = step_rows(instance, feature_runs, f"{n_shards} shard(s)")
    row = {"path": f"Dagster, {n_shards} shard run(s) at once", "shards": n_shards,
           "chunk_embed_s": middle - started, "index_s": done - middle, "total_s": done - started}
    return row, overhead


def thread_caps(threads: int) -> dict[str, str]:
    """A worker's environment that caps every pool of threads its steps start at `threads`:
    OpenMP and MKL (torch's intra-op pool), the Rust tokenizer's Rayon pool, and one embedder
    stream (each stream adds a thread). `embedding_shard`'s run config sets torch's count too."""
    from retro_ops.settings import EMBEDDER_STREAMS_ENV

    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "RAYON_NUM_THREADS": n, EMBEDDER_STREAMS_ENV: "1"}


def store_stats(settings) -> dict:
    """Fragments and bytes of the chunk and embedding tables: one fragment per write (commit)."""
    import lancedb

    db, found = lancedb.connect(settings.lancedb_uri), {}
    for name in db.list_tables().tables:
        kind = "chunks" if name == "chunks" else "embeddings" if name.startswith("embeddings") else None
        if kind:
            stats = db.open_table(name).stats()
            found[f"{kind}_fragments"] = stats["fragment_stats"]["num_fragments"]
            found[f"{kind}_bytes"] = stats["total_bytes"]
    return found


def commit_seconds(root: Path, rows: int = 512, dim: int = 384, commits: int = 8) -> float:
    """Median seconds of one embedding write (writer lock, key check, append, commit) of `rows`
    vectors, the block `embed_corpus` writes, into a scratch table on this disk."""
    import numpy as np

    from retro_ops.features.store import FeatureStore

    store, times = FeatureStore(str(root / "commit_probe")), []
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    for i in range(commits):
        started = time.perf_counter()
        store.add_embeddings("probe", [f"{i}-{j}" for j in range(rows)], vectors)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def celery_path(root: Path, corpus: Path, args: argparse.Namespace, n_workers: int) -> tuple[dict, list[dict]]:
    """Chunk + embed of every shard through `n_workers` Celery workers, every worker's threads
    capped at --threads-per-worker: the shard runs at once, each step on whichever worker is free.
    Then the index through the same workers (train once, fill per shard, merge), timed apart.
    Workers start (and import the stack) before the clock starts."""
    import uuid

    from assets.cluster import BROKER_ENV, CELERY_LOCATION, QUEUE_ENV, CeleryWorkers
    from assets.instance import dagster_instance, ensure_partition
    from assets.launch import FEATURES_JOB, INDEX_JOB, launch_runs, launch_shards, materialize_corpus
    from assets.partitions import RETRIEVAL_SET_PARTITIONS
    from assets.sharded import SHARDS_ENV
    from retro_ops.settings import HOME_ENV

    settings, _ = _home(root, f"celery{n_workers}", corpus)
    queue = f"retro_ops_bench_{uuid.uuid4().hex[:8]}"
    os.environ.update({HOME_ENV: str(settings.home), "DAGSTER_HOME": str(settings.dagster_home), QUEUE_ENV: queue,
                       SHARDS_ENV: str(args.shards)})
    os.environ.setdefault(BROKER_ENV, "pyamqp://guest:guest@127.0.0.1:5672//")
    instance = dagster_instance(settings)
    ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, "bench")
    assert materialize_corpus(instance, "bench", selection=["documents"]).success
    embed = {"ops": {"embedding_shard": {"config": {"torch_threads": args.threads_per_worker}}}}
    index = {"config": {"factory": args.factory}}
    with CeleryWorkers(queue, count=n_workers, logs=root / f"workers{n_workers}", prefix=queue,
                       env={**os.environ, **thread_caps(args.threads_per_worker)}):
        started = time.perf_counter()
        runs = _ok(launch_shards(settings, FEATURES_JOB, "bench", args.shards, location=CELERY_LOCATION,
                                 run_config=embed))
        middle = time.perf_counter()
        _ok(launch_runs(settings, "retrieval_set,index_training", ["bench"], location=CELERY_LOCATION,
                        run_config={"ops": {"index_training": index}}))
        fills = _ok(launch_shards(settings, INDEX_JOB, "bench", args.shards, location=CELERY_LOCATION))
        [merge] = _ok(launch_runs(settings, "sharded_faiss_index", ["bench"], location=CELERY_LOCATION,
                                  run_config={"ops": {"sharded_faiss_index": index}}))
        done = time.perf_counter()
    steps = step_rows(instance, runs, f"{n_workers} worker(s)")
    shard_chunks = [r["chunks"] for r in steps if r["asset"] == "chunk_shard"]
    embedded = [r for r in steps if r["asset"] == "embedding_shard"]
    filled = [_asset_metadata(instance, r.run_id)["index_shard"] for r in fills]
    merged = _asset_metadata(instance, merge.run_id)["sharded_faiss_index"]
    row = {"path": f"Celery, {n_workers} worker(s), {args.shards} shard runs", "workers": n_workers,
           "shards": args.shards, "chunks": sum(shard_chunks), "shard_chunks": shard_chunks,
           # what shard sizes allow: the workers can go no faster than the largest shard
           "balance_bound": sum(shard_chunks) / max(max(shard_chunks), sum(shard_chunks) / n_workers),
           "torch_threads": sorted({r["torch_threads"] for r in embedded}),
           "busy_cores": sum(r["busy_cores"] for r in embedded) / len(embedded),
           "chunk_embed_s": middle - started, "index_s": done - middle, "total_s": done - started,
           "library_in_steps_s": sum(r["library_s"] for r in steps), "merge_s": merged["merge_seconds"],
           "ntotal": merged["ntotal"], "shard_index_bytes": [f["bytes"] for f in filled],
           "shard_vectors": [f["vectors"] for f in filled], **store_stats(settings)}
    return row, steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, "unused: each configuration gets a fresh temporary home")
    parser.add_argument("--chapters", type=int, default=24, help="Moby-Dick chapters 1..N (default 24)")
    parser.add_argument("--editions", type=parse_editions, default=[],
                        help="shipped corpora added whole to the chapters, e.g. kjv_nt,asv_nt,web_nt,sotu "
                             "(about 3.7k chunks each; sotu is one .jsonl file): issue #28 measures on "
                             "~20k chunks, where embedding dominates")
    parser.add_argument("--shards", type=int, default=2,
                        help="the sharded configuration (default 2); with --celery at least 2, so that "
                             "two workers have two steps to take at once")
    parser.add_argument("--factory", default="IVF16,Flat", help="index factory (mergeable; default IVF16,Flat)")
    parser.add_argument("--celery", action="store_true",
                        help="one Celery worker against two on the shard runs (chunk + embed, then the "
                             "index), not shard counts")
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                        help="with --celery: the threads of every worker's steps (torch, OpenMP, MKL, the "
                             "tokenizer's Rayon pool), the same for one worker and for two (default 1)")
    args = parser.parse_args(argv)
    if args.celery and args.shards < 2:
        parser.error(f"--shards {args.shards}: two workers need at least 2 shard runs to take steps at once")
    if args.threads_per_worker < 1:
        parser.error(f"--threads-per-worker {args.threads_per_worker}: at least 1")
    return args


def main() -> None:
    args = parse_args()
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_PROFILE", "RETRO_OPS_EMBEDDER_STREAMS"):
        os.environ.pop(var, None)  # every store under the fresh homes, one embedder stream
    root = Path(tempfile.mkdtemp(prefix="retro-ops-scale-"))
    sampler = LoadSampler().__enter__()
    meta = {"chapters": args.chapters, "editions": args.editions, "factory": args.factory, "shards": args.shards}
    try:
        corpus = _corpus(root, args.chapters, args.editions)
        log("library baseline")
        started = time.perf_counter()
        rows = [{**library_path(root, corpus, args.factory), **sampler.during(started, time.perf_counter())}]
        steps: list[dict] = []
        for n in (1, 2) if args.celery else ():
            log(f"Celery, {n} worker(s), {args.threads_per_worker} thread(s) each")
            started = time.perf_counter()
            row, per_step = celery_path(root, corpus, args, n)
            rows.append({**row, **sampler.during(started, time.perf_counter())})
            steps += per_step
        for n in () if args.celery else (1, args.shards):
            log(f"Dagster, {n} shard(s)")
            started = time.perf_counter()
            row, per_step = dagster_path(root, corpus, n, args.factory)
            rows.append({**row, **sampler.during(started, time.perf_counter())})
            steps += per_step
        one, many = rows[1], rows[2]
        for stage in STAGES:
            many[f"speedup_{stage}"] = one[stage] / many[stage]
        if args.celery:
            meta.update(threads_per_worker=args.threads_per_worker, worker_env=thread_caps(args.threads_per_worker),
                        lancedb_commit_s=commit_seconds(root))
    finally:
        sampler.__exit__()
        shutil.rmtree(root, ignore_errors=True)
    report_tables("scale", _tables(rows, steps, "1 worker" if args.celery else "1 shard"), {**meta, **environment()},
                  notes=["Shared machine: compare ratios from one run, each beside the load average it ran "
                         "under (load_avg_1min in the JSON: at the end)."])


def _tables(rows: list[dict], steps: list[dict], baseline: str) -> list:
    seconds = [Column(s, s.removesuffix("_s") + " (s)", "{:.1f}") for s in STAGES]
    return [
        ("wall time, one corpus", [
            Column("path", "path"), Column("chunks", "chunks", "{:,}"), *seconds,
            Column("speedup_chunk_embed_s", f"chunk+embed speed-up vs {baseline}", "{:.2f}x"),
            Column("speedup_total_s", f"total speed-up vs {baseline}", "{:.2f}x"),
            Column("balance_bound", "shard-size bound", "{:.2f}x"),
            Column("torch_threads", "torch threads (embed steps)"),
            Column("busy_cores", "busy cores (embed steps)", "{:.2f}"),
            Column("load_mean", "load avg (mean)", "{:.1f}"), Column("load_max", "load avg (max)", "{:.1f}")], rows),
        ("Dagster overhead per materialization (feature shards)", [
            Column("config", "configuration"), Column("partition", "partition"), Column("asset", "asset"),
            Column("chunks", "chunks", "{:,}"), Column("torch_threads", "torch threads"),
            Column("busy_cores", "busy cores", "{:.2f}"),
            Column("library_s", "library call (s)", "{:.2f}"), Column("step_s", "Dagster step (s)", "{:.2f}"),
            Column("in_step_overhead_s", "in-step overhead (s)", "{:.2f}"),
            Column("run_overhead_per_asset_s", "run overhead per asset (s)", "{:.2f}"),
            Column("step_events", "step events"), Column("run_events", "run-level events")], steps),
    ]


if __name__ == "__main__":
    main()
