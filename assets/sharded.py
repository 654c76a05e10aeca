"""Scale-out on Dagster's own machinery: shards are partitions, Dagster's executors run them.

A corpus splits into shards by document (`retro_ops.features.shards`): `chunk_shard` and
`embedding_shard` are partitioned by corpus x shard, so each shard is its own run and Dagster
runs shards at once (a backfill from the UI, `launch_shards` from code), every step in its own
process under the multiprocess executor; in a cluster the Celery or Kubernetes executor and run
launcher do the same (deploy/). Shards write the shared LanceDB tables through FeatureStore's
per-table writer lock (`features/locks.py`), so concurrent shards never store a key twice.

A retrieval set's index is trained once (`index_training`), filled per shard in parallel
(`index_shard`, retrieval set x shard) and merged and published (`sharded_faiss_index`) like a
single-process build. The shard count of this code location is RETRO_OPS_SHARDS (default 2):
it changes which documents a shard holds, never the chunks, vectors or neighbours. With
RETRO_OPS_SHARDED_AUTOMATION=1 they carry the unsharded assets' automation conditions: a corpus's
new documents re-chunk and re-embed its shards, a set whose content changed re-trains, re-fills
and re-merges its index (`assets/automation.py`).
"""

import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.automation import ON_UPSTREAM_CHANGE, ON_UPSTREAM_DATA_CHANGE, sharded_automation
from assets.features import documents
from assets.groups import SCALE_OUT, owners
from assets.partitions import (
    CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS, corpus_partitions, retrieval_set_partitions,
)
from assets.resources import (
    CatalogResource, EmbedderResource, FeatureStoreResource, IndexStoreResource, ProgressResource,
)
from assets.retrieval import retrieval_set
from retro_ops.durable import write_atomic
from retro_ops.features import pipeline
from retro_ops.features.locks import WRITE_POOL
from retro_ops.features.shards import MAX_SHARDS, ShardSpec, all_shards, limit_threads, threads_per_shard
from retro_ops.retrieval.index import shards as index_shards
from retro_ops.retrieval.index.build import IndexConfig
from retro_ops.settings import DAGSTER_STORAGE_ENV, HOME_ENV, Settings

GROUP = SCALE_OUT
SHARDS_ENV = "RETRO_OPS_SHARDS"  # document shards of the scale-out route (default 2)
#: how many shards run at once on this machine (`launch_shards` sets it; default: all of them)
PARALLEL_ENV = "RETRO_OPS_SHARDS_AT_ONCE"
DEFAULT_SHARDS = 2
SHARD = "shard"
FEATURES_JOB = "sharded_features"
INDEX_JOB = "sharded_index_fill"


def shard_count(env: dict[str, str] | None = None) -> int:
    """This code location's shard count (RETRO_OPS_SHARDS), validated with a one-line error."""
    text = (os.environ if env is None else env).get(SHARDS_ENV, "") or str(DEFAULT_SHARDS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_SHARDS:
        raise ValueError(f"{SHARDS_ENV}={text!r}: a whole number from 1 to {MAX_SHARDS}")
    return int(text)


class EmbeddingShardConfig(dg.Config):
    """torch_threads: CPU threads of one shard's embedding step; 0 = this machine's cores divided
    by the shards that run at once (RETRO_OPS_SHARDS_AT_ONCE, else every shard of the corpus)."""

    torch_threads: int = 0

    def threads(self, n_shards: int) -> int:
        if self.torch_threads > 0:
            return self.torch_threads
        at_once = os.environ.get(PARALLEL_ENV, "")
        return threads_per_shard(int(at_once) if at_once.isdigit() and int(at_once) > 0 else n_shards)


class ShardedIndexConfig(dg.Config):
    """factory: "" chooses by size (refine stages cannot be merged; see index_shards);
    nprobe: lists searched (0 = default)."""

    factory: str = ""
    flat_below: int = 5_000
    nprobe: int = 0

    def index_config(self) -> IndexConfig:
        return IndexConfig(factory=self.factory, flat_below=self.flat_below, nprobe=self.nprobe)


def _shard(context: dg.AssetExecutionContext) -> tuple[str, ShardSpec]:
    key = context.partition_key.keys_by_dimension
    first = CORPUS_PARTITIONS if CORPUS_PARTITIONS in key else RETRIEVAL_SET_PARTITIONS
    return key[first], ShardSpec.parse(key[SHARD])


def sharded_assets(n_shards: int, automated: bool = False) -> list[dg.AssetsDefinition]:
    """The scale-out assets for `n_shards` shards (the partitions are fixed per code location),
    with the automation conditions of their unsharded counterparts where `automated`."""
    on_change = ON_UPSTREAM_CHANGE if automated else None
    on_data_change = ON_UPSTREAM_DATA_CHANGE if automated else None
    shards = dg.StaticPartitionsDefinition([s.key for s in all_shards(n_shards)])
    by_corpus = dg.MultiPartitionsDefinition({CORPUS_PARTITIONS: corpus_partitions, SHARD: shards})
    by_set = dg.MultiPartitionsDefinition({RETRIEVAL_SET_PARTITIONS: retrieval_set_partitions, SHARD: shards})
    with warnings.catch_warnings():  # beta since 1.5, and the documented way to map one dimension
        warnings.simplefilter("ignore", dg.BetaWarning)
        of_corpus = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=CORPUS_PARTITIONS)
        of_set = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=RETRIEVAL_SET_PARTITIONS)

    @dg.asset(partitions_def=by_corpus, group_name=GROUP, owners=owners(GROUP), kinds={"python", "lancedb"},
              pool=WRITE_POOL,
              deps=[dg.AssetDep(documents, partition_mapping=of_corpus)], code_version="1",
              automation_condition=on_change)
    def chunk_shard(context: dg.AssetExecutionContext, catalog: CatalogResource,
                    feature_store: FeatureStoreResource, embedder: EmbedderResource,
                    progress: ProgressResource) -> dg.MaterializeResult:
        """The chunks of one shard of a corpus's documents (same ids as unsharded chunking)."""
        corpus, shard = _shard(context)
        result = pipeline.chunk_corpus(catalog.open(), feature_store.open(), embedder.chunker(), corpus,
                                       shard=shard, run_id=context.run.run_id,
                                       progress=progress.tracker(context, f"chunking shard {shard.key}"))
        return dg.MaterializeResult(data_version=dg.DataVersion(result.data_version), metadata={
            "chunks": result.chunks, "new_chunks": result.new_chunks,
            "documents_chunked": result.new_documents_chunked,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "lancedb_version": result.write.version, "seconds": round(result.seconds, 3)})

    @dg.asset(partitions_def=by_corpus, group_name=GROUP, owners=owners(GROUP), kinds={"pytorch", "lancedb"},
              pool=WRITE_POOL,
              deps=[chunk_shard], code_version="1", automation_condition=on_change)
    def embedding_shard(context: dg.AssetExecutionContext, config: EmbeddingShardConfig, catalog: CatalogResource,
                        feature_store: FeatureStoreResource, embedder: EmbedderResource,
                        progress: ProgressResource) -> dg.MaterializeResult:
        """Frozen-BERT vectors of one shard's chunk texts not yet embedded in this space, on
        this shard's share of the cores."""
        corpus, shard = _shard(context)
        threads = limit_threads(config.threads(n_shards))
        result = pipeline.embed_corpus(catalog.open(), feature_store.open(), embedder.load(), corpus,
                                       shard=shard, run_id=context.run.run_id,
                                       progress=progress.tracker(context, f"embedding shard {shard.key}"))
        return dg.MaterializeResult(data_version=dg.DataVersion(result.data_version), metadata={
            "chunks": result.chunks, "newly_embedded": result.newly_embedded,
            "chunks_per_second": round(result.chunks_per_second, 2),
            "embedding_space": result.space.space_id, "lancedb_version": result.write.version,
            "torch_threads": threads, "seconds": round(result.seconds, 3)})

    @dg.asset(partitions_def=retrieval_set_partitions, group_name=GROUP, owners=owners(GROUP), kinds={"faiss"},
              deps=[retrieval_set], code_version="1", automation_condition=on_data_change)
    def index_training(context: dg.AssetExecutionContext, config: ShardedIndexConfig,
                       catalog: CatalogResource, feature_store: FeatureStoreResource,
                       index_store: IndexStoreResource) -> dg.MaterializeResult:
        """The set's index structure trained once, on the same seeded sample a single build uses."""
        cat = catalog.open()
        version = cat.latest_retrieval_set_version(context.partition_key)
        trained = index_shards.train_index(feature_store.open(), version,
                                           cat.embedding_space_dim(version.embedding_space_id),
                                           config.index_config())
        path = index_shards.save_trained(index_shards.shards_dir(index_store.path(), version), trained)
        return dg.MaterializeResult(data_version=dg.DataVersion(f"{version.digest[:8]}-{trained.factory}"), metadata={
            "factory": trained.factory, "train_size": trained.train_size,
            "seconds": round(trained.seconds, 3), "path": str(path), "notes": "; ".join(trained.notes),
            "retrieval_set_version_id": version.id})

    @dg.asset(partitions_def=by_set, group_name=GROUP, owners=owners(GROUP), kinds={"faiss"},
              deps=[dg.AssetDep(index_training, partition_mapping=of_set)], code_version="1",
              automation_condition=on_change)
    def index_shard(context: dg.AssetExecutionContext, catalog: CatalogResource,
                    feature_store: FeatureStoreResource, index_store: IndexStoreResource) -> dg.MaterializeResult:
        """The trained index filled with one shard's vectors (a file beside the trained index)."""
        name, shard = _shard(context)
        started = time.perf_counter()
        cat = catalog.open()
        version = cat.latest_retrieval_set_version(name)
        folder = index_shards.shards_dir(index_store.path(), version)
        dim = cat.embedding_space_dim(version.embedding_space_id)
        ids, vectors = index_shards.shard_vectors(feature_store.open(), version, dim, shard)
        data = index_shards.fill_shard(index_shards.load_trained(folder).data, ids, vectors)
        write_atomic(index_shards.shard_file(folder, shard), data)
        return dg.MaterializeResult(metadata={
            "vectors": len(ids), "bytes": len(data), "seconds": round(time.perf_counter() - started, 3),
            "retrieval_set_version_id": version.id})

    @dg.asset(partitions_def=retrieval_set_partitions, group_name=GROUP, owners=owners(GROUP), kinds={"faiss"},
              deps=[dg.AssetDep(index_shard, partition_mapping=of_set)], code_version="1",
              automation_condition=on_change)
    def sharded_faiss_index(context: dg.AssetExecutionContext, config: ShardedIndexConfig,
                            catalog: CatalogResource, feature_store: FeatureStoreResource,
                            index_store: IndexStoreResource) -> dg.MaterializeResult:
        """The shards merged into one index, measured and published as the set's index."""
        started = time.perf_counter()
        cat = catalog.open()
        version = cat.latest_retrieval_set_version(context.partition_key)
        folder = index_shards.shards_dir(index_store.path(), version)
        trained = index_shards.load_trained(folder)
        files = [index_shards.shard_file(folder, s) for s in all_shards(n_shards)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"shards not filled yet: {', '.join(missing)} (materialize index_shard)")
        merged = index_shards.merge_shards(trained.data, [f.read_bytes() for f in files], trained.factory,
                                           config.index_config())
        build = index_shards.publish_merged(cat, feature_store.open(), index_store.path(), version, merged,
                                            trained, shards=n_shards, seconds=time.perf_counter() - started,
                                            config=config.index_config(), run_id=context.run.run_id)
        m = build.manifest
        return dg.MaterializeResult(data_version=dg.DataVersion(m.sha256[:16]), metadata={
            "factory": m.factory, "ntotal": m.ntotal, "shards": n_shards, "sha256": m.sha256,
            "published": build.published is not None, "merge_seconds": m.build_seconds,
            **build.quality.as_metadata()})

    return [chunk_shard, embedding_shard, index_training, index_shard, sharded_faiss_index]


#: what each scale-out step materializes per shard
SHARD_SELECTIONS = {FEATURES_JOB: "chunk_shard,embedding_shard", INDEX_JOB: "index_shard"}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ShardRun:
    partition: str
    run_id: str
    success: bool
    wall_s: float  # its process, start to exit (what Dagster adds shows against library seconds)
    output: str  # the tail of the run's console output, for a failure message


def launch_shards(settings: Settings, job: str, key: str, n_shards: int, *,
                  parallel: int | None = None) -> list[ShardRun]:
    """One Dagster run per shard of `key` (a corpus for FEATURES_JOB, a retrieval set for
    INDEX_JOB), `parallel` at once (default: all): each is `dagster asset materialize` in its own
    process on the home's instance, its steps under the multiprocess executor; what a backfill
    launched from the UI does, without needing the daemon. (In-process runs on threads are no
    substitute: Dagster's log set-up is not thread-safe and deadlocks.)"""
    dimension = CORPUS_PARTITIONS if job == FEATURES_JOB else RETRIEVAL_SET_PARTITIONS
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home), HOME_ENV: str(settings.home),
           SHARDS_ENV: str(n_shards), PARALLEL_ENV: str(min(parallel or n_shards, n_shards))}
    if settings.dagster_storage_url:  # the dagster.yaml retro-ops writes names this variable
        env[DAGSTER_STORAGE_ENV] = settings.dagster_storage_url

    def run(shard: ShardSpec) -> tuple[str, float, subprocess.CompletedProcess]:
        partition = str(dg.MultiPartitionKey({dimension: key, SHARD: shard.key}))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "assets.definitions",
             "-d", str(REPO), "--select", SHARD_SELECTIONS[job], "--partition", partition],
            cwd=REPO, env=env, capture_output=True, text=True)
        return partition, time.perf_counter() - started, done

    from assets.launch import dagster_instance  # (it imports the definitions, which import us)

    with ThreadPoolExecutor(max_workers=parallel or n_shards) as pool:  # threads only wait here
        finished = list(pool.map(run, all_shards(n_shards)))
    with dagster_instance(settings) as instance:
        runs = []
        for partition, wall_s, done in finished:
            found = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition}), limit=1)
            run_id = found[0].run_id if found else ""
            success = done.returncode == 0 and bool(found) and found[0].is_success
            runs.append(ShardRun(partition, run_id, success, wall_s, (done.stdout + done.stderr)[-2000:]))
        return runs


SHARDED_ASSETS = sharded_assets(shard_count(), automated=sharded_automation())
