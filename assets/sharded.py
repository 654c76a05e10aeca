"""Scale-out on Dagster's own machinery: shards are partitions, Dagster's executors run them.

A corpus splits into shards by document (`retro_ops.features.shards`): `chunk_shard` and
`embedding_shard` are partitioned by corpus x shard, so each shard is its own run and Dagster
runs shards at once (a backfill from the UI, `assets.launch.launch_shards` from code), each
run a process of its own with its steps in it (the local location's in-process executor); in
a cluster the Celery or Kubernetes executor and run launcher do the same (deploy/). Shards write
the shared LanceDB tables through FeatureStore's per-table writer lock (`features/locks.py`), so
concurrent shards never store a key twice.

A retrieval set's index is trained once (`index_training`), filled per shard in parallel
(`index_shard`, retrieval set x shard) and merged and published (`sharded_faiss_index`) like a
single-process build; the library does each step (`retro_ops.retrieval.index.shards`), the
assets only report. The shard count of this code location is RETRO_OPS_SHARDS (default 2):
it changes which documents a shard holds, never the chunks, vectors or neighbours. With
RETRO_OPS_SHARDED_AUTOMATION=1 they carry the unsharded assets' automation conditions: a corpus's
new documents re-chunk and re-embed its shards, a set whose content changed re-trains, re-fills
and re-merges its index (`assets/automation.py`).
"""

import os
import time
import warnings

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
from retro_ops.features.locks import WRITE_POOL
from retro_ops.features.shards import MAX_SHARDS, ShardSpec, all_shards, limit_threads, threads_per_shard
from retro_ops.retrieval.index.build import IndexConfig

# Each body imports the library stages it runs: the location loads light (assets/definitions.py).

GROUP = SCALE_OUT
SHARDS_ENV = "RETRO_OPS_SHARDS"  # document shards of the scale-out route (default 2)
#: how many shards run at once on this machine (`launch_shards` sets it; default: all of them)
PARALLEL_ENV = "RETRO_OPS_SHARDS_AT_ONCE"
DEFAULT_SHARDS = 2
SHARD = "shard"


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
    """factory: "" chooses by size (refine stages cannot be merged; see retrieval/index/shards.py);
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
        from retro_ops.features import pipeline

        corpus, shard = _shard(context)
        cpu = time.process_time()  # every thread of this process: the tokenizer's pool too
        result = pipeline.chunk_corpus(catalog.open(), feature_store.open(), embedder.chunker(), corpus,
                                       shard=shard, run_id=context.run.run_id,
                                       progress=progress.tracker(context, f"chunking shard {shard.key}"))
        return dg.MaterializeResult(data_version=dg.DataVersion(result.data_version), metadata={
            "chunks": result.chunks, "new_chunks": result.new_chunks,
            "documents_chunked": result.new_documents_chunked,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "lancedb_version": result.write.version, "seconds": round(result.seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3)})

    @dg.asset(partitions_def=by_corpus, group_name=GROUP, owners=owners(GROUP), kinds={"pytorch", "lancedb"},
              pool=WRITE_POOL,
              deps=[chunk_shard], code_version="1", automation_condition=on_change)
    def embedding_shard(context: dg.AssetExecutionContext, config: EmbeddingShardConfig, catalog: CatalogResource,
                        feature_store: FeatureStoreResource, embedder: EmbedderResource,
                        progress: ProgressResource) -> dg.MaterializeResult:
        """Frozen-BERT vectors of one shard's chunk texts not yet embedded in this space, on
        this shard's share of the cores."""
        from retro_ops.features import pipeline

        corpus, shard = _shard(context)
        threads = limit_threads(config.threads(n_shards))
        loaded = embedder.load()
        cpu = time.process_time()  # every thread of this process: cpu_seconds / seconds = cores kept busy
        result = pipeline.embed_corpus(catalog.open(), feature_store.open(), loaded, corpus,
                                       shard=shard, run_id=context.run.run_id,
                                       progress=progress.tracker(context, f"embedding shard {shard.key}"))
        return dg.MaterializeResult(data_version=dg.DataVersion(result.data_version), metadata={
            "chunks": result.chunks, "newly_embedded": result.newly_embedded,
            "chunks_per_second": round(result.chunks_per_second, 2),
            "embedding_space": result.space.space_id, "lancedb_version": result.write.version,
            "torch_threads": threads, "embedder_streams": loaded.streams, "seconds": round(result.seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3)})

    @dg.asset(partitions_def=retrieval_set_partitions, group_name=GROUP, owners=owners(GROUP), kinds={"faiss"},
              deps=[retrieval_set], code_version="1", automation_condition=on_data_change)
    def index_training(context: dg.AssetExecutionContext, config: ShardedIndexConfig,
                       catalog: CatalogResource, feature_store: FeatureStoreResource,
                       index_store: IndexStoreResource) -> dg.MaterializeResult:
        """The set's index structure trained once, on the same seeded sample a single build uses."""
        from retro_ops.retrieval.index.shards import train_and_save

        version, trained, path = train_and_save(catalog.open(), feature_store.open(), index_store.path(),
                                                context.partition_key, config.index_config())
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
        from retro_ops.retrieval.index.shards import fill_and_save

        name, shard = _shard(context)
        filled = fill_and_save(catalog.open(), feature_store.open(), index_store.path(), name, shard)
        return dg.MaterializeResult(metadata={
            "vectors": filled.vectors, "bytes": filled.bytes, "seconds": round(filled.seconds, 3),
            "retrieval_set_version_id": filled.version.id})

    @dg.asset(partitions_def=retrieval_set_partitions, group_name=GROUP, owners=owners(GROUP), kinds={"faiss"},
              deps=[dg.AssetDep(index_shard, partition_mapping=of_set)], code_version="1",
              automation_condition=on_change)
    def sharded_faiss_index(context: dg.AssetExecutionContext, config: ShardedIndexConfig,
                            catalog: CatalogResource, feature_store: FeatureStoreResource,
                            index_store: IndexStoreResource) -> dg.MaterializeResult:
        """The shards merged into one index, measured and published as the set's index."""
        from retro_ops.retrieval.index.shards import merge_and_publish

        build = merge_and_publish(catalog.open(), feature_store.open(), index_store.path(), context.partition_key,
                                  n_shards, config=config.index_config(), run_id=context.run.run_id)
        m = build.manifest
        return dg.MaterializeResult(data_version=dg.DataVersion(m.sha256[:16]), metadata={
            "factory": m.factory, "ntotal": m.ntotal, "shards": n_shards, "sha256": m.sha256,
            "published": build.published is not None, "merge_seconds": m.build_seconds,
            **build.quality.as_metadata()})

    return [chunk_shard, embedding_shard, index_training, index_shard, sharded_faiss_index]


SHARDED_ASSETS = sharded_assets(shard_count(), automated=sharded_automation())
