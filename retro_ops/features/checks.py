"""Invariants of the feature store, as data: each check returns pass/fail with actual vs expected.

The Dagster layer turns these into asset checks; the library keeps them testable on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retro_ops.features.schemas import CHUNKS, table_keys

if TYPE_CHECKING:  # type-only: the code location's checks load without LanceDB or transformers
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.store import FeatureStore

_CHECK_DOCS = 256  # documents re-tokenized per batch by `chunks_complete`


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    metadata: dict = field(default_factory=dict)


def chunks_not_empty(store: FeatureStore, doc_ids: list[str]) -> CheckOutcome:
    """No chunk without tokens or text: an empty chunk would embed to a meaningless vector."""
    rows = store.chunks_of_documents(doc_ids, ["chunk_id", "n_tokens", "text"])
    empty_tokens = int(pc.sum(pc.equal(rows.column("n_tokens"), 0)).as_py() or 0)
    empty_text = int(pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(rows.column("text"))),
                                     0)).as_py() or 0)
    return CheckOutcome(empty_tokens == 0 and empty_text == 0 and rows.num_rows > 0, {
        "chunks": rows.num_rows, "empty_token_chunks": empty_tokens,
        "empty_text_chunks": empty_text, "expected_empty": 0,
    })


def unique_keys(store: FeatureStore, table: str) -> CheckOutcome:
    """No key stored twice (`<table>_unique_keys`). Counting distinct keys would hide a duplicate
    that a concurrent writer added; an index built over it would hold that row twice."""
    dups = store.duplicate_keys(table)
    extra = int(pc.sum(dups.column("count")).as_py() or 0) - dups.num_rows
    return CheckOutcome(dups.num_rows == 0, {
        "table": table, "key": ", ".join(table_keys(table)), "duplicated_keys": dups.num_rows,
        "extra_rows": extra, "expected_duplicated_keys": 0,
        "examples": ", ".join(str(r) for r in dups.slice(0, 5).to_pylist()),
    })


def chunks_complete(store: FeatureStore, chunker: Chunker, doc_ids: list[str]) -> CheckOutcome:
    """Each document's stored chunks hold all its tokens: the sum of its chunks' token counts
    equals the token count of its re-tokenized text, and positions run 0..n-1 without a gap. A
    run killed mid-document leaves a prefix that only this catches."""
    truncated, examples, checked = 0, [], 0
    for start in range(0, len(doc_ids), _CHECK_DOCS):
        group = doc_ids[start:start + _CHECK_DOCS]
        texts = store.document_texts(group)
        rows = store.chunks_of_documents(group, ["doc_id", "position", "n_tokens"])
        per_doc = rows.group_by("doc_id").aggregate([
            ("n_tokens", "sum"), ("position", "count_distinct"), ("position", "max")])
        stored = {d: (t, n, last) for d, t, n, last in zip(*(per_doc.column(c).to_pylist() for c in (
            "doc_id", "n_tokens_sum", "position_count_distinct", "position_max")))}
        for doc_id, (ids, _) in zip(group, chunker.tokenize([texts.get(d, "") for d in group])):
            n_tokens, n_chunks, last = stored.get(doc_id, (0, 0, -1))
            expected_chunks = -(-len(ids) // chunker.config.chunk_tokens)
            if n_tokens != len(ids) or n_chunks != expected_chunks or last != n_chunks - 1:
                truncated += 1
                if len(examples) < 5:
                    examples.append(f"{doc_id}: {n_tokens}/{len(ids)} tokens stored")
            checked += 1
    return CheckOutcome(truncated == 0, {
        "documents": checked, "incomplete_documents": truncated, "expected_incomplete": 0,
        "table": CHUNKS, "examples": "; ".join(examples),
    })


@dataclass(frozen=True)
class CorpusVectors:
    """A corpus's distinct chunk hashes and the embedding rows found for them, read once and
    shared by every embedding check."""

    hashes: pa.Array
    table: pa.Table
    dim: int

    @classmethod
    def load(cls, store: FeatureStore, space_id: str, dim: int, doc_ids: list[str]) -> "CorpusVectors":
        hashes = pc.unique(store.chunks_of_documents(doc_ids, ["content_hash"]).column("content_hash"))
        return cls(hashes, store.embeddings_of(space_id, dim, hashes.to_pylist()), dim)


def embeddings_complete(data: CorpusVectors) -> CheckOutcome:
    """Every chunk of the corpus has exactly one vector of the space's dimension."""
    found = data.table.column("content_hash")
    missing = len(data.hashes) - len(pc.unique(found))
    actual_dim = data.table.schema.field("vector").type.list_size
    return CheckOutcome(missing == 0 and actual_dim == data.dim, {
        "distinct_chunk_texts": len(data.hashes), "with_embedding": len(pc.unique(found)),
        "missing": missing, "dim": actual_dim, "expected_dim": data.dim,
    })


def embeddings_finite(data: CorpusVectors) -> CheckOutcome:
    """No NaN or Inf anywhere: FAISS would silently drop such a vector (see STACK-FACTS)."""
    dim = data.dim
    vectors = data.table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = vectors.reshape(-1, dim) if len(vectors) else np.zeros((0, dim), np.float32)
    bad_rows = int((~np.isfinite(vectors)).any(axis=1).sum())
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    return CheckOutcome(bad_rows == 0, {
        "vectors": len(vectors), "non_finite_vectors": bad_rows, "expected_non_finite": 0,
        "min_norm": float(norms.min()) if len(norms) else 0.0,
        "max_norm": float(norms.max()) if len(norms) else 0.0,
    })
