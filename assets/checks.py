"""Asset checks: one per invariant, each reporting actual vs expected. They are declared as
check specs on their (partitioned) asset and evaluated in the same step, so a failing blocking
check stops everything downstream of that corpus."""


from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from retro_ops.features import checks as feature_checks
from retro_ops.features.schemas import CHUNKS, DOCUMENTS, MEMBERS, embeddings_table_name

if TYPE_CHECKING:  # type-only: the code location loads without LanceDB or transformers
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.spaces import EmbeddingSpace
    from retro_ops.features.store import FeatureStore


def _unique(name: str, table: str, asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, blocking=True,
                             description=f"No key stored twice in LanceDB table {table}.")


DOCUMENT_CHECKS = [_unique("documents_unique_keys", DOCUMENTS, "documents")]
CHUNK_CHECKS = [
    dg.AssetCheckSpec("chunks_not_empty", asset="chunks", blocking=True,
                      description="No chunk without tokens or text."),
    dg.AssetCheckSpec("chunks_complete", asset="chunks", blocking=True,
                      description="Each document's stored tokens equal its re-tokenized text."),
    _unique("chunks_unique_keys", CHUNKS, "chunks"),
]
EMBEDDING_CHECKS = [
    dg.AssetCheckSpec("chunk_embeddings_complete", asset="chunk_embeddings", blocking=True,
                      description="Every chunk has an embedding of the space's dimension."),
    dg.AssetCheckSpec("chunk_embeddings_finite", asset="chunk_embeddings", blocking=True,
                      description="No NaN or Inf in any vector."),
    _unique("embeddings_unique_keys", "embeddings_<space>", "chunk_embeddings"),
]
RETRIEVAL_SET_CHECKS = [_unique("retrieval_set_chunks_unique_keys", MEMBERS, "retrieval_set")]


def _result(name: str, outcome: feature_checks.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=outcome.passed, metadata=outcome.metadata)


def unique_keys_result(name: str, store: FeatureStore, table: str) -> dg.AssetCheckResult:
    return _result(name, feature_checks.unique_keys(store, table))


def chunk_check_results(store: FeatureStore, chunker: Chunker,
                        doc_ids: list[str]) -> list[dg.AssetCheckResult]:
    return [
        _result("chunks_not_empty", feature_checks.chunks_not_empty(store, doc_ids)),
        _result("chunks_complete", feature_checks.chunks_complete(store, chunker, doc_ids)),
        unique_keys_result("chunks_unique_keys", store, CHUNKS),
    ]


def embedding_check_results(store: FeatureStore, space: EmbeddingSpace,
                            doc_ids: list[str]) -> list[dg.AssetCheckResult]:
    data = feature_checks.CorpusVectors.load(store, space.space_id, space.dim, doc_ids)
    return [
        _result("chunk_embeddings_complete", feature_checks.embeddings_complete(data)),
        _result("chunk_embeddings_finite", feature_checks.embeddings_finite(data)),
        unique_keys_result("embeddings_unique_keys", store, embeddings_table_name(space.space_id)),
    ]

INDEX_CHECKS = [
    dg.AssetCheckSpec("faiss_index_recall", asset="faiss_index", blocking=True,
                      description="recall@10 against exact search >= the configured threshold."),
    dg.AssetCheckSpec("faiss_index_ntotal", asset="faiss_index", blocking=True,
                      description="The index holds exactly the retrieval-set version's chunks."),
]


def index_check_results(result, threshold: float) -> list[dg.AssetCheckResult]:
    quality, manifest = result.quality, result.manifest
    return [
        dg.AssetCheckResult(check_name="faiss_index_recall", passed=quality.recall_at_k >= threshold,
                            metadata={"recall_at_10": round(quality.recall_at_k, 4),
                                      "threshold": threshold, "queries": quality.queries,
                                      "published": result.published is not None}),
        dg.AssetCheckResult(check_name="faiss_index_ntotal",
                            passed=manifest.ntotal == result.version.n_chunks,
                            metadata={"ntotal": manifest.ntotal,
                                      "expected": result.version.n_chunks}),
    ]
