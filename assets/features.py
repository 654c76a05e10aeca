"""Feature assets, one partition per corpus: documents -> chunks -> chunk_embeddings.

Each asset writes to LanceDB / the catalog itself and returns a `MaterializeResult` (the default
IO manager would pickle return values). Writers of the feature store share the `lancedb_writes`
pool: unlimited by default (a file lock per table already serializes local writers); give it a
limit of 1 where LanceDB lives on object storage (`dagster instance concurrency set
lancedb_writes 1`). Data versions are content digests, so Dagster shows a
downstream asset as stale exactly when its input really changed.
"""


import dagster as dg

from assets.checks import (
    CHUNK_CHECKS,
    DOCUMENT_CHECKS,
    EMBEDDING_CHECKS,
    chunk_check_results,
    embedding_check_results,
    unique_keys_result,
)
from assets.automation import ON_UPSTREAM_CHANGE
from assets.groups import CORPORA, FEATURES, owners
from assets.partitions import corpus_partitions
from assets.resources import (
    CatalogResource,
    EmbedderResource,
    FeatureStoreResource,
    ProgressResource,
)
from retro_ops.features.locks import WRITE_POOL
from retro_ops.features.schemas import DOCUMENTS

# Each body imports the library stages it runs: the location loads light (assets/definitions.py).

MAX_ISSUES_SHOWN = 50


def _issues_markdown(issues) -> str:
    lines = [f"- `{i.severity}` {i.source}: {i.reason}" for i in issues[:MAX_ISSUES_SHOWN]]
    if len(issues) > MAX_ISSUES_SHOWN:
        lines.append(f"- ... and {len(issues) - MAX_ISSUES_SHOWN} more")
    return "\n".join(lines) or "none"


@dg.asset(partitions_def=corpus_partitions, group_name=CORPORA, owners=owners(CORPORA),
          kinds={"python", "lancedb"}, deps=["corpus_files"], check_specs=DOCUMENT_CHECKS,
          pool=WRITE_POOL, code_version="1", automation_condition=ON_UPSTREAM_CHANGE)
def documents(context: dg.AssetExecutionContext, catalog: CatalogResource,
              feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    """Unique documents of the corpus (doc_id = hash of normalised text), with their sources."""
    from retro_ops.features import pipeline

    store = feature_store.open()
    result = pipeline.ingest_documents(catalog.open(), store, context.partition_key,
                                       run_id=context.run.run_id)
    for issue in result.issues:
        context.log.warning(str(issue))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.corpus_version.digest[:16]),
        check_results=[unique_keys_result("documents_unique_keys", store, DOCUMENTS)],
        metadata={
            "dagster/row_count": result.documents,
            "files": result.files, "documents": result.documents,
            "new_documents": result.new_documents,
            "duplicates_collapsed": result.duplicates_collapsed,
            "issues": len(result.issues), "issue_list": dg.MetadataValue.md(_issues_markdown(result.issues)),
            "corpus_digest": result.corpus_version.digest,
            "corpus_version_id": result.corpus_version.id,
            "lancedb_table": result.write.table, "lancedb_version": result.write.version,
            "seconds": round(result.seconds, 3),
        },
    )


@dg.asset(partitions_def=corpus_partitions, group_name=FEATURES, owners=owners(FEATURES),
          kinds={"python", "lancedb"}, deps=[documents], check_specs=CHUNK_CHECKS, pool=WRITE_POOL,
          code_version="1", automation_condition=ON_UPSTREAM_CHANGE)
def chunks(context: dg.AssetExecutionContext, catalog: CatalogResource,
           feature_store: FeatureStoreResource, embedder: EmbedderResource,
           progress: ProgressResource) -> dg.MaterializeResult:
    """64-token WordPiece chunks of every document, each linked to its continuation chunk."""
    from retro_ops.features import pipeline

    store, cat, chunker = feature_store.open(), catalog.open(), embedder.chunker()
    result = pipeline.chunk_corpus(cat, store, chunker, context.partition_key,
                                   run_id=context.run.run_id,
                                   progress=progress.tracker(context, "chunking documents"))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.data_version),
        check_results=chunk_check_results(store, chunker,
                                          cat.corpus_doc_ids(result.corpus_version.id)),
        metadata={
            "dagster/row_count": result.chunks,
            "chunks": result.chunks, "new_chunks": result.new_chunks,
            "documents_chunked": result.new_documents_chunked, "new_tokens": result.new_tokens,
            "documents_resumed": result.resumed_documents,
            "documents_shorter_than_one_chunk": result.short_documents,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "corpus_digest": result.corpus_version.digest,
            "lancedb_table": result.write.table, "lancedb_version": result.write.version,
            "seconds": round(result.seconds, 3),
        },
    )


@dg.asset(partitions_def=corpus_partitions, group_name=FEATURES, owners=owners(FEATURES),
          kinds={"pytorch", "lancedb"}, deps=[chunks], check_specs=EMBEDDING_CHECKS, pool=WRITE_POOL,
          code_version="1", automation_condition=ON_UPSTREAM_CHANGE)
def chunk_embeddings(context: dg.AssetExecutionContext, catalog: CatalogResource,
                     feature_store: FeatureStoreResource, embedder: EmbedderResource,
                     progress: ProgressResource) -> dg.MaterializeResult:
    """Frozen-BERT embeddings of every chunk, keyed by (chunk content hash, embedding space);
    only chunk texts never embedded in this space are computed."""
    from retro_ops.features import pipeline

    store, cat = feature_store.open(), catalog.open()
    result = pipeline.embed_corpus(cat, store, embedder.load(), context.partition_key,
                                   run_id=context.run.run_id,
                                   progress=progress.tracker(context, "embedding chunks"))
    space = result.space
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.data_version),
        check_results=embedding_check_results(
            store, space, cat.corpus_doc_ids(result.corpus_version.id)),
        metadata={
            "dagster/row_count": result.chunks,
            "chunks": result.chunks, "distinct_chunk_texts": result.distinct_texts,
            "newly_embedded": result.newly_embedded,
            "chunks_per_second": round(result.chunks_per_second, 2),
            "embedding_space": space.space_id, "embedder": space.model_name,
            "dim": space.dim, "pooling": space.pooling,
            "corpus_digest": result.corpus_version.digest,
            "lancedb_table": result.write.table, "lancedb_version": result.write.version,
            "seconds": round(result.seconds, 3),
        },
    )
