"""Retrieval assets, one partition per retrieval set: retrieval_set -> faiss_index.

`retrieval_set` pins the exact chunks (and LanceDB versions) a set holds now; `faiss_index`
builds, measures and atomically publishes its index. The recall check is blocking, and an index
below the recall threshold is never published: the previous one keeps serving.
"""

import dagster as dg

from assets.checks import (
    INDEX_CHECKS,
    RETRIEVAL_SET_CHECKS,
    index_check_results,
    unique_keys_result,
)
from assets.automation import ON_UPSTREAM_CHANGE, ON_UPSTREAM_DATA_CHANGE
from assets.features import chunk_embeddings
from assets.figures import markdown_table
from assets.groups import RETRIEVAL, owners
from assets.partitions import retrieval_set_partitions
from assets.sources import EXCLUSIONS
from assets.resources import (
    CatalogResource,
    EmbedderResource,
    FeatureStoreResource,
    IndexStoreResource,
)
from retro_ops.features.locks import WRITE_POOL
from retro_ops.features.schemas import MEMBERS
from retro_ops.retrieval.index.build import IndexConfig  # FAISS and NumPy: light, as in assets/sharded.py

# Each body imports the library stages it runs: the location loads light (assets/definitions.py).


@dg.asset(partitions_def=retrieval_set_partitions, group_name=RETRIEVAL, owners=owners(RETRIEVAL),
          kinds={"python", "lancedb"}, check_specs=RETRIEVAL_SET_CHECKS, pool=WRITE_POOL,
          deps=[dg.AssetDep(chunk_embeddings, partition_mapping=dg.AllPartitionMapping()), EXCLUSIONS],
          code_version="1", automation_condition=ON_UPSTREAM_CHANGE)
def retrieval_set(context: dg.AssetExecutionContext, catalog: CatalogResource,
                  feature_store: FeatureStoreResource, embedder: EmbedderResource) -> dg.MaterializeResult:
    """The chunks of the set's corpora (latest versions) minus exclusions, with neighbour values."""
    from retro_ops.retrieval.sets import build_retrieval_set_version

    cat, store = catalog.open(), feature_store.open()
    build = build_retrieval_set_version(cat, store, context.partition_key,
                                        embedder.load().space, run_id=context.run.run_id)
    v = build.version
    return dg.MaterializeResult(
        data_version=dg.DataVersion(v.digest[:16]),
        check_results=[unique_keys_result("retrieval_set_chunks_unique_keys", store, MEMBERS)],
        metadata={
            "dagster/row_count": v.n_chunks,
            "chunks": v.n_chunks, "excluded_chunks": v.n_excluded, "new_version": build.created,
            "retrieval_set_version_id": v.id, "digest": v.digest,
            "corpora": ", ".join(cat.get_retrieval_set(context.partition_key).corpora),
            "corpus_version_ids": str(v.corpus_version_ids), "embedding_space": v.embedding_space_id,
            "chunks_lancedb_version": v.chunks_lance_version,
            "embeddings_lancedb_version": v.embeddings_lance_version,
            "members_lancedb_version": v.members_lance_version,
        },
    )


class IndexBuildConfig(dg.Config):
    """factory: a faiss factory string; "" chooses by size. recall_threshold gates publishing."""

    factory: str = ""
    flat_below: int = 5_000
    nprobe: int = 0
    recall_threshold: float = 0.9
    eval_queries: int = 500


@dg.asset(partitions_def=retrieval_set_partitions, group_name=RETRIEVAL, owners=owners(RETRIEVAL),
          kinds={"faiss"}, deps=[retrieval_set], check_specs=INDEX_CHECKS, code_version="1",
          automation_condition=ON_UPSTREAM_DATA_CHANGE)
def faiss_index(context: dg.AssetExecutionContext, config: IndexBuildConfig,
                catalog: CatalogResource, feature_store: FeatureStoreResource,
                index_store: IndexStoreResource) -> dg.MaterializeResult:
    """FAISS index (ids = chunk ids, inner product) of the set's latest version, published
    atomically with a manifest; recall@10 and latency measured before publishing."""
    from retro_ops.retrieval.index.route import index_retrieval_set

    cat = catalog.open()
    version = cat.latest_retrieval_set_version(context.partition_key)
    result = index_retrieval_set(
        cat, feature_store.open(), index_store.path(), context.partition_key,
        cat.embedding_space_dim(version.embedding_space_id),
        config=IndexConfig(factory=config.factory, flat_below=config.flat_below, nprobe=config.nprobe),
        run_id=context.run.run_id, eval_queries=config.eval_queries,
        min_recall=config.recall_threshold)
    m, q = result.manifest, result.quality
    if result.published is None:
        context.log.error(f"recall@10 {result.quality.recall_at_k:.3f} < {config.recall_threshold}: "
                          "index not published; the previous index stays current")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(m.sha256[:16]),
        check_results=index_check_results(result, config.recall_threshold),
        metadata={
            "dagster/row_count": m.ntotal,
            "quality": dg.MetadataValue.md(markdown_table(
                ["factory", f"recall@{q.k}", "threshold", "queries", "p50 ms", "p99 ms", "batch q/s"],
                [[m.factory, f"{q.recall_at_k:.4f}", config.recall_threshold, q.queries,
                  f"{q.p50_ms:.3f}", f"{q.p99_ms:.3f}", f"{q.batch_qps:,.0f}"]])),
            "factory": m.factory, "ntotal": m.ntotal, "dim": m.dim, "train_size": m.train_size,
            "index_bytes": m.index_bytes, "bytes_per_vector": round(m.index_bytes / max(m.ntotal, 1), 1),
            "build_seconds": m.build_seconds, "sha256": m.sha256,
            "search_params": str(m.search_params), "published": result.published is not None,
            "reused": result.reused,
            "path": str(result.published.path) if result.published else "",
            "retrieval_set_version_id": m.retrieval_set_version_id, "notes": "; ".join(m.notes),
            **result.quality.as_metadata(),
        },
    )
