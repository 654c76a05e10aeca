"""The feature-store half of a purge: what a document left in LanceDB, and deleting it.

A purge (`retro_ops.erasure.purge`) snapshots each document first (`snapshot_document`: its
source paths, chunk ids and content hashes, and which retrieval-set versions held which of its
chunks), records that in the catalog, then calls `erase_documents`. The rule is generic so a
table added later is covered too: every table with a `doc_id` column loses the document's rows
(documents, chunks, retrieval-set members, ...), and every other table with a `content_hash`
column (embeddings of each space, chunk scores, ...) loses the rows of the document's texts that
no remaining chunk still has. `model_reads` is kept: ids only, it is the audit of who read what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lancedb.expr import col, lit
from sqlalchemy import select

from retro_ops.catalog import Catalog
from retro_ops.catalog import tables as m
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import MEMBERS

#: Tables that keep a purged document's rows: they hold ids and hashes, never text.
KEEP_TABLES = frozenset({"model_reads"})


@dataclass(frozen=True)
class DocumentSnapshot:
    """What must be erased for one document, read before anything is deleted."""

    doc_id: str
    source_uris: list[str]
    chunks: list[list]  # [chunk_id, position, content_hash], by position
    held_by: dict[str, list[int]]  # retrieval-set version digest -> the chunk ids it held


@dataclass
class StoreErasure:
    rows_deleted: dict[str, int] = field(default_factory=dict)
    orphan_hashes: int = 0  # texts no remaining chunk has: their vectors and scores went too
    shared_hashes: int = 0  # texts another document still has: kept, they are its text too


def snapshot_document(catalog: Catalog, store: FeatureStore, doc_id: str) -> DocumentSnapshot:
    with catalog.session() as s:
        sources = sorted({u for table in (m.DocumentSource, m.CorpusVersionSource)
                          for u in s.scalars(select(table.source_uri).where(table.doc_id == doc_id))})
    chunks = store.chunks_of_documents([doc_id], ["chunk_id", "position", "content_hash"]).sort_by("position")
    held: dict[str, list[int]] = {}
    if MEMBERS in store.db.list_tables().tables:
        rows = (store.db.open_table(MEMBERS).search().where((col("doc_id") == lit(doc_id)).to_sql())
                .select(["set_digest", "chunk_id"]).limit(None).to_arrow())
        for digest, chunk_id in zip(rows.column("set_digest").to_pylist(), rows.column("chunk_id").to_pylist()):
            held.setdefault(digest, []).append(int(chunk_id))
    return DocumentSnapshot(doc_id, sources,
                            [[int(r["chunk_id"]), int(r["position"]), r["content_hash"]]
                             for r in chunks.to_pylist()],
                            {d: sorted(ids) for d, ids in sorted(held.items())})


def erase_documents(store: FeatureStore, doc_ids: list[str], content_hashes: list[str]) -> StoreErasure:
    """Delete the documents' rows everywhere, then the rows of their now orphaned texts.
    Idempotent: a rerun after a kill deletes what is left and finds the same orphans."""
    found = StoreErasure()
    with_doc = store.tables_with_column("doc_id")
    for name in with_doc:
        if name not in KEEP_TABLES:
            found.rows_deleted[name] = store.delete_rows(name, "doc_id", doc_ids)
    hashes = sorted(set(content_hashes))
    orphans = sorted(set(hashes) - store.hashes_in_use(hashes))
    found.orphan_hashes, found.shared_hashes = len(orphans), len(hashes) - len(orphans)
    for name in store.tables_with_column("content_hash"):
        if name not in KEEP_TABLES and name not in with_doc:
            found.rows_deleted[name] = store.delete_rows(name, "content_hash", orphans)
    return found


def text_tables(store: FeatureStore) -> list[str]:
    """The tables an erasure touches, whose older versions must go as well."""
    names = set(store.tables_with_column("doc_id")) | set(store.tables_with_column("content_hash"))
    return sorted(names - KEEP_TABLES)
