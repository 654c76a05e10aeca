"""What changed between two models (their training data) or two retrieval-set versions."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from lancedb.expr import col, lit

from retro_ops.catalog import tables as m
from retro_ops.errors import LineageError
from retro_ops.features.schemas import CHUNKS, MEMBERS
from retro_ops.lineage.audit import model_reads_view
from retro_ops.lineage.views import AuditDB, lance_arrow


@dataclass
class LineageDiff:
    a: str
    b: str
    kind: str  # "models" | "retrieval-set versions"
    documents_added: list[str]
    documents_removed: list[str]
    chunks_added: list[int]
    chunks_removed: list[int]

    def summary(self) -> dict:
        return {"a": self.a, "b": self.b, "kind": self.kind,
                "documents_added": len(self.documents_added),
                "documents_removed": len(self.documents_removed),
                "chunks_added": len(self.chunks_added), "chunks_removed": len(self.chunks_removed)}


def _is_set_ref(ref: str) -> bool:
    return ref.startswith("set:")


def _set_side(db: AuditDB, ref: str, side: str) -> str:
    """Register `<side>_chunks(chunk_id, doc_id)`: the members of `set:NAME` (latest version)
    or `set:NAME@VERSION_ID`; returns the resolved label."""
    name, _, version = ref.removeprefix("set:").partition("@")
    if version:
        if not version.isdigit():
            raise LineageError(f"{ref!r}: a retrieval-set version is set:NAME@VERSION_ID (a number)")
        info = db.catalog.retrieval_set_version(int(version))
        if info.retrieval_set != name:
            raise LineageError(f"{ref!r}: version {version} belongs to set {info.retrieval_set!r}")
    else:
        info = db.catalog.latest_retrieval_set_version(name)
    db.register(f"{side}_chunks", lance_arrow(db.store, MEMBERS, ["chunk_id", "doc_id"],
                                              (col("set_digest") == lit(info.digest)).to_sql()))
    return f"set:{info.retrieval_set}@{info.id}"


def _model_side(db: AuditDB, ref: str, side: str) -> str:
    """Register `<side>_docs` (the model's training documents, from the catalog) and
    `<side>_chunks` (its recorded training chunks; for a model trained before reads were
    recorded, the chunks of its training documents)."""
    info = db.catalog.resolve_model(ref)
    db.catalog_view("model_training_documents", m.ModelTrainingDocument.model_id == info.id,
                    f"{side}_docs")
    if model_reads_view(db, info, f"{side}_reads"):
        db.con.execute(f"CREATE OR REPLACE TEMP VIEW {side}_chunks AS SELECT chunk_id "
                       f"FROM {side}_reads WHERE role = 'train'")
    else:
        db.lance_view(CHUNKS, columns=["chunk_id", "doc_id"], as_name="chunk_docs")
        db.con.execute(f"CREATE OR REPLACE TEMP VIEW {side}_chunks AS SELECT c.chunk_id "
                       f"FROM chunk_docs c JOIN {side}_docs d USING (doc_id)")
    return info.ref


def diff(db: AuditDB, ref_a: str, ref_b: str) -> LineageDiff:
    """Documents and chunks in B but not A (added) and in A but not B (removed)."""
    if _is_set_ref(ref_a) != _is_set_ref(ref_b):
        raise LineageError(f"cannot diff {ref_a!r} with {ref_b!r}: compare two models or two "
                           "retrieval-set versions (set:NAME or set:NAME@VERSION_ID)")
    side = _set_side if _is_set_ref(ref_a) else _model_side
    a, b = side(db, ref_a, "a"), side(db, ref_b, "b")

    def column(sql: str) -> list:
        table: pa.Table = db.arrow(sql)
        return table.column(0).to_pylist()

    docs = "docs" if side is _model_side else "chunks"  # a set's documents: its members' documents
    return LineageDiff(
        a, b, "retrieval-set versions" if _is_set_ref(ref_a) else "models",
        column(f"SELECT DISTINCT doc_id FROM b_{docs} EXCEPT SELECT doc_id FROM a_{docs} ORDER BY 1"),
        column(f"SELECT DISTINCT doc_id FROM a_{docs} EXCEPT SELECT doc_id FROM b_{docs} ORDER BY 1"),
        column("SELECT chunk_id FROM b_chunks EXCEPT SELECT chunk_id FROM a_chunks ORDER BY 1"),
        column("SELECT chunk_id FROM a_chunks EXCEPT SELECT chunk_id FROM b_chunks ORDER BY 1"))
