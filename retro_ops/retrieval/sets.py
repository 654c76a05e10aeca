"""Build a retrieval-set version: the exact chunks a set holds now, with their neighbour values.

A version is the chunks of the latest version of each of the set's corpora, minus excluded
chunks, in chunk-id order. Its digest covers the chunk ids and the embedding space, so an
unchanged set gets no new version (checked under the members table's writer lock, so two builds
at once make one version). Members are written to LanceDB once per digest with their
neighbour value (chunk + continuation, 2m tokens); a continuation never crosses a document end
and is never an excluded chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retro_ops.catalog import Catalog, RetrievalSetVersionInfo
from retro_ops.features.spaces import EmbeddingSpace
from retro_ops.errors import RetrievalSetError
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS, MEMBERS, embeddings_table_name
from retro_ops.ids import sha256_hex

CHUNK_COLUMNS = ["chunk_id", "doc_id", "position", "content_hash", "text", "token_ids",
                 "next_chunk_id"]


@dataclass(frozen=True)
class RetrievalSetBuild:
    version: RetrievalSetVersionInfo
    created: bool  # False: the set was unchanged and its latest version is reused


def set_digest(chunk_ids: np.ndarray, space_id: str) -> str:
    return sha256_hex(np.ascontiguousarray(chunk_ids, dtype=np.int64).tobytes() + space_id.encode())


def _members(chunks: pa.Table, digest: str) -> pa.Table:
    """Attach each kept chunk's continuation (the next kept chunk of the same document)."""
    following = pc.index_in(chunks.column("next_chunk_id"), value_set=chunks.column("chunk_id"))
    continuation = chunks.select(["text", "token_ids"]).take(following)
    return pa.table({
        "set_digest": pa.array([digest] * chunks.num_rows, pa.string()),
        **{name: chunks.column(name) for name in
           ("chunk_id", "doc_id", "position", "content_hash", "text", "token_ids")},
        "continuation_text": pc.fill_null(continuation.column("text"), ""),
        "continuation_token_ids": continuation.column("token_ids"),
    })


def build_retrieval_set_version(
    catalog: Catalog, store: FeatureStore, name: str, space: EmbeddingSpace, *,
    run_id: str | None = None,
) -> RetrievalSetBuild:
    info = catalog.get_retrieval_set(name)
    corpus_versions = [catalog.latest_corpus_version(c) for c in info.corpora]
    doc_ids = sorted({d for v in corpus_versions for d in catalog.corpus_doc_ids(v.id)})
    chunks = store.chunks_of_documents(doc_ids, CHUNK_COLUMNS)
    excluded = catalog.active_exclusions()  # every scope: chunk ids, texts, documents
    dropped = [pc.is_in(chunks.column(column), value_set=pa.array(sorted(values), kind))
               for column, values, kind in (("chunk_id", excluded.chunk_ids, pa.int64()),
                                            ("content_hash", excluded.content_hashes, pa.string()),
                                            ("doc_id", excluded.doc_ids, pa.string()))]
    keep = pc.invert(pc.or_(pc.or_(dropped[0], dropped[1]), dropped[2]))
    chunks = chunks.filter(keep).sort_by("chunk_id")
    n_excluded = len(keep) - chunks.num_rows
    if chunks.num_rows == 0:
        raise RetrievalSetError(f"retrieval set {name!r} holds no chunks: materialize the chunks "
                                f"of {', '.join(info.corpora)} first")
    missing = store.missing_embeddings(space.space_id, space.dim, chunks.column("content_hash"))
    if len(missing):
        raise RetrievalSetError(
            f"{len(missing)} chunk texts of retrieval set {name!r} have no embedding in space "
            f"{space.space_id}: materialize chunk_embeddings for {', '.join(info.corpora)}")
    digest = set_digest(chunks.column("chunk_id").to_numpy(), space.space_id)
    # One builder at a time from "is this digest the latest?" to "recorded": two builds of one
    # set started together then give one version and one copy of its members, not two.
    with store.lock(MEMBERS):
        latest_id = catalog.get_retrieval_set(name).latest_version_id
        if latest_id is not None:
            latest = catalog.latest_retrieval_set_version(name)
            if latest.digest == digest:
                return RetrievalSetBuild(latest, created=False)
        # members of a digest are written once, atomically: a build killed after this line
        # finds them complete on its rerun and only records the version
        write = store.add_members(digest, _members(chunks, digest))
        table = embeddings_table_name(space.space_id)
        version = catalog.record_retrieval_set_version(
            name, digest=digest, n_chunks=chunks.num_rows, n_excluded=n_excluded,
            corpus_version_ids=[v.id for v in corpus_versions], embedding_space_id=space.space_id,
            chunks_lance_version=store.version(CHUNKS), embeddings_table=table,
            embeddings_lance_version=store.version(table),
            members_lance_version=write.version, run_id=run_id)
    return RetrievalSetBuild(version, created=True)


def retrieval_set_vectors(store: FeatureStore, version: RetrievalSetVersionInfo,
                          dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids int64, vectors float32) of a version, in chunk-id order, from the pinned tables."""
    members = store.members(version.digest, ["chunk_id", "content_hash"]).sort_by("chunk_id")
    vectors = store.vectors_of(version.embedding_space_id, dim, members.column("content_hash"),
                               version.embeddings_lance_version)
    return members.column("chunk_id").to_numpy(), vectors
