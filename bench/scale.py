"""Scale-out: chunk + embed + index wall time of one corpus at 1 shard vs N shards, through
Dagster (each shard its own run, steps under the multiprocess executor), and Dagster's overhead
per materialization (seconds beyond the library call it wraps).

Each configuration gets a fresh home and the same documents; the library path (no Dagster, one
process) runs in the same process as the baseline. Overhead per asset = a run's wall time (its
`dagster asset materialize` process, start to exit) minus the library seconds its assets report,
divided by its assets; and, inside the run, step time minus library time per asset. The machine
may be shared: the ratio measured in one run is the number to read, with `load_avg_1min` beside it.

    python bench/scale.py --chapters 24 --shards 2
    python bench/scale.py --chapters 135 --celery    # one Celery worker against two (RabbitMQ)
    python bench/scale.py --chapters 135 --editions kjv_nt,asv_nt,web_nt --celery   # ~16k chunks

With --celery the sharded configurations are Dagster's Celery executor (deploy/celery) with one
and then two `dagster-celery` workers started here (`assets.cluster.CeleryWorkers`, a queue of
their own, torch threads = cores / workers), both over the same shard runs; the broker is
DAGSTER_CELERY_BROKER_URL (default the machine's RabbitMQ). Dagster's storage and the catalog
stay SQLite under each fresh home (one machine: every worker reaches it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO_ROOT, CORPORA, Column, base_parser, environment, log, report_tables, step_spans

STAGES = ("chunk_embed_s", "index_s", "total_s")


def _corpus(root: Path, chapters: int, editions: list[str]) -> Path:
    """Moby-Dick chapters 1..`chapters`, and every chapter of each shipped edition in `editions`
    (`corpora/<name>/*.txt`, named `<name>_<file>` so that no two collide)."""
    folder = root / "corpus"
    folder.mkdir()
    source = Path(str(CORPORA["moby_dick"])).parent
    if not (source / f"chapter_{chapters}.txt").exists():
        raise SystemExit(f"--chapters {chapters}: {source} has no chapter_{chapters}.txt (Moby-Dick has 135)")
    for n in range(1, chapters + 1):
        shutil.copy(source / f"chapter_{n}.txt", folder / f"chapter_{n}.txt")
    for name in editions:
        for path in sorted((REPO_ROOT / "corpora" / name).glob("*.txt")):
            shutil.copy(path, folder / f"{name}_{path.name}")
    return folder


def parse_editions(text: str) -> list[str]:
    """argparse type: shipped corpora of .txt files, e.g. "kjv_nt,asv_nt,web_nt"."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    missing = [n for n in names if not any((REPO_ROOT / "corpora" / n).glob("*.txt"))]
    if missing:
        raise argparse.ArgumentTypeError(f"no shipped corpus of .txt files named {', '.join(missing)} "
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
    """The baseline: the library calls the assets wrap, one process, no Dagster."""
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
    started = time.perf_counter()
    chunks = chunk_corpus(catalog, store, chunker, "bench")
    embed_corpus(catalog, store, embedder, "bench")
    middle = time.perf_counter()
    build_retrieval_set_version(catalog, store, "bench", embedder.space)
    index_retrieval_set(catalog, store, settings.indices_dir, "bench", embedder.space.dim,
                        config=IndexConfig(factory=factory))
    done = time.perf_counter()
    return {"path": "library, 1 process", "shards": 1, "chunks": chunks.chunks,
            "chunk_embed_s": middle - started, "index_s": done - middle, "total_s": done - started}


def _asset_metadata(instance, run_id: str, field: str) -> dict:
    """One metadata value of each asset a run materialized, where it reported it: `seconds`
    (its library call), `torch_threads` (the embedding shard caps them)."""
    found = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            if field in materialization.metadata:
                found[materialization.asset_key.to_user_string()] = materialization.metadata[field].value
    return found


def dagster_path(root: Path, corpus: Path, n_shards: int, factory: str) -> tuple[dict, list[dict]]:
    import dagster as dg

    from assets.definitions import ALL_ASSETS, default_resources
    from assets.launch import (
        FEATURES_JOB, INDEX_JOB, dagster_instance, ensure_partition, launch_shards, materialize_corpus,
    )
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

    overhead = []
    for run in feature_runs:
        steps = {r["step"]: r["step_s"] for r in step_spans(instance, run.run_id) if r["ok"]}
        library = _asset_metadata(instance, run.run_id, "seconds")
        threads = _asset_metadata(instance, run.run_id, "torch_threads")
        for asset, seconds in library.items():
            overhead.append({"shards": n_shards, "partition": run.partition, "asset": asset,
                             "torch_threads": threads.get(asset, "-"),
                             "library_s": seconds, "step_s": steps[asset],
                             "in_step_overhead_s": steps[asset] - seconds,
                             "run_overhead_per_asset_s": (run.wall_s - sum(library.values())) / len(library)})
    row = {"path": f"Dagster, {n_shards} shard run(s) at once", "shards": n_shards,
           "chunk_embed_s": middle - started, "index_s": done - middle, "total_s": done - started}
    return row, overhead


def celery_path(root: Path, corpus: Path, n_shards: int, n_workers: int) -> dict:
    """Chunk + embed of every shard through Celery workers: the shard runs at once, each step
    on whichever worker is free. Workers start (and import the stack) before the clock starts."""
    import uuid

    from assets.cluster import BROKER_ENV, QUEUE_ENV, CeleryWorkers
    from assets.launch import CELERY_LOCATION, FEATURES_JOB, dagster_instance, launch_shards, materialize_corpus
    from assets.sharded import PARALLEL_ENV, SHARDS_ENV
    from retro_ops.settings import HOME_ENV

    settings, _ = _home(root, f"celery{n_workers}", corpus)
    queue = f"retro_ops_bench_{uuid.uuid4().hex[:8]}"
    os.environ.update({HOME_ENV: str(settings.home), "DAGSTER_HOME": str(settings.dagster_home), QUEUE_ENV: queue,
                       SHARDS_ENV: str(n_shards), PARALLEL_ENV: str(n_workers), "OMP_NUM_THREADS": "1"})
    os.environ.setdefault(BROKER_ENV, "pyamqp://guest:guest@127.0.0.1:5672//")
    instance = dagster_instance(settings)
    assert materialize_corpus(instance, "bench", selection=["documents"]).success
    with CeleryWorkers(queue, count=n_workers, logs=root / f"workers{n_workers}", prefix=queue):
        started = time.perf_counter()
        runs = launch_shards(settings, FEATURES_JOB, "bench", n_shards, location=CELERY_LOCATION)
        took = time.perf_counter() - started
    assert all(r.success for r in runs), [r.output for r in runs if not r.success]
    seconds = [sum(_asset_metadata(instance, r.run_id, "seconds").values()) for r in runs]
    return {"path": f"Celery, {n_workers} worker(s), {n_shards} shard runs", "shards": n_shards,
            "chunk_embed_s": took, "index_s": float("nan"), "total_s": took, "library_in_steps_s": sum(seconds)}


def main() -> None:
    parser = base_parser(__doc__, "unused: each configuration gets a fresh temporary home")
    parser.add_argument("--chapters", type=int, default=24, help="Moby-Dick chapters 1..N (default 24)")
    parser.add_argument("--editions", type=parse_editions, default=[],
                        help="shipped corpora added whole to the chapters, e.g. kjv_nt,asv_nt,web_nt "
                             "(about 3.7k chunks each): issue #28 measures on ~20k chunks, where "
                             "embedding dominates")
    parser.add_argument("--shards", type=int, default=2, help="the sharded configuration (default 2)")
    parser.add_argument("--factory", default="IVF16,Flat", help="index factory (mergeable; default IVF16,Flat)")
    parser.add_argument("--celery", action="store_true",
                        help="one Celery worker against two on the shard runs (chunk + embed), not shard counts")
    args = parser.parse_args()
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_PROFILE"):
        os.environ.pop(var, None)  # every store under the fresh homes
    root = Path(tempfile.mkdtemp(prefix="retro-ops-scale-"))
    sampler = LoadSampler().__enter__()
    try:
        corpus = _corpus(root, args.chapters, args.editions)
        log("library baseline")
        started = time.perf_counter()
        rows = [{**library_path(root, corpus, args.factory), **sampler.during(started, time.perf_counter())}]
        overhead: list[dict] = []
        for n in (1, 2) if args.celery else ():
            log(f"Celery, {n} worker(s)")
            started = time.perf_counter()
            rows.append({**celery_path(root, corpus, args.shards, n), **sampler.during(started, time.perf_counter())})
        for n in () if args.celery else (1, args.shards):
            log(f"Dagster, {n} shard(s)")
            started = time.perf_counter()
            row, per_asset = dagster_path(root, corpus, n, args.factory)
            rows.append({**row, **sampler.during(started, time.perf_counter())})
            overhead += per_asset
        one, many = rows[1], rows[2]
        for stage in STAGES:
            many[f"speedup_{stage}"] = one[stage] / many[stage]
    finally:
        sampler.__exit__()
        shutil.rmtree(root, ignore_errors=True)
    seconds = [Column(s, s.removesuffix("_s") + " (s)", "{:.1f}") for s in STAGES]
    report_tables("scale", [
        ("wall time, one corpus", [Column("path", "path"), *seconds,
                                   Column("speedup_chunk_embed_s", "chunk+embed speed-up vs 1 shard", "{:.2f}x"),
                                   Column("speedup_total_s", "total speed-up vs 1 shard", "{:.2f}x"),
                                   Column("load_mean", "load avg (mean)", "{:.1f}"),
                                   Column("load_max", "load avg (max)", "{:.1f}")], rows),
        ("Dagster overhead per materialization (feature shards)", [
            Column("shards", "shards"), Column("partition", "partition"), Column("asset", "asset"),
            Column("torch_threads", "torch threads"),
            Column("library_s", "library call (s)", "{:.2f}"), Column("step_s", "Dagster step (s)", "{:.2f}"),
            Column("in_step_overhead_s", "in-step overhead (s)", "{:.2f}"),
            Column("run_overhead_per_asset_s", "run overhead per asset (s)", "{:.2f}")], overhead),
    ], {"chapters": args.chapters, "editions": args.editions, "factory": args.factory, **environment()},
        notes=["Shared machine: compare ratios from one run; see load_avg_1min in the JSON."])


if __name__ == "__main__":
    main()
