"""Backward (model -> documents, neighbours, index, evaluations, deployments) and forward
(document or chunk -> corpus versions, sets, indices, models, deployments) audits.

A purged document's chunks and set memberships are gone from LanceDB; its purge record (hashes
and ids) stands in for them, so its forward audit still answers. Forward audits and
`exclusion_report` list the models that read the text and say they may need retraining.

Each audit loads only the rows its question touches (a model's reads, one document's chunks)
into the DuckDB engine of `views`, and answers with joins there. Results are dataclasses: a
summary plus full row lists that the CLI writes to JSON or CSV.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col, lit
from sqlalchemy import select

from retro_ops.catalog import ModelInfo
from retro_ops.catalog import tables as m
from retro_ops.catalog.store import corpus_root, source_in_corpus
from retro_ops.errors import LineageError
from retro_ops.features.schemas import CHUNKS, MEMBERS
from retro_ops.lineage.views import AuditDB

_DOC_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ModelLineage:
    """Everything that made one model. `tables` holds the full row lists (documents, chunks...)
    as Arrow: 100k+ rows stay columnar until a caller needs Python rows (`lists`, converted on
    first use; measured 0.03 s of a 0.2 s audit at 1.1M chunks)."""

    summary: dict
    tables: dict[str, pa.Table] = field(default_factory=dict)

    @cached_property
    def lists(self) -> dict[str, list[dict]]:
        return {name: table.to_pylist() for name, table in self.tables.items()}


@dataclass
class ForwardLineage:
    """Everything one document (or chunk) reached."""

    summary: dict
    lists: dict[str, list[dict]] = field(default_factory=dict)


def _model_ref(db: AuditDB) -> None:
    db.catalog_view("models")
    db.con.execute("CREATE OR REPLACE TEMP MACRO model_ref(name, version, id) AS "
                   "CASE WHEN name IS NOT NULL AND version IS NOT NULL THEN name || '/' || version "
                   "ELSE 'model-' || id END")


def _one(db: AuditDB, sql: str, params: list) -> dict | None:
    rows = db.rows(sql, params)
    return rows[0] if rows else None


def model_reads_view(db: AuditDB, info: ModelInfo, as_name: str = "reads") -> bool:
    """This model's rows of `model_reads` at its recorded version; False for a model trained
    before reads were recorded (then the view is empty)."""
    where = (col("model_id") == lit(int(info.id))).to_sql()
    if info.reads_table is None:
        db.lance_view("model_reads", where="false", as_name=as_name)
        return False
    from retro_ops.lineage.views import LANCE_COLUMNS, lance_arrow

    db.register(as_name, lance_arrow(db.store, info.reads_table, LANCE_COLUMNS["model_reads"], where,
                                     info.reads_lance_version))
    return True


def backward(db: AuditDB, ref: str) -> ModelLineage:
    """From a model to the exact documents, chunks, neighbours, index and runs behind it."""
    info = db.catalog.resolve_model(ref)
    cv = info.corpus_version_id
    for name in ("corpus_versions", "corpora", "retrieval_sets", "retrieval_set_versions",
                 "index_builds", "embedding_spaces"):
        db.catalog_view(name)
    _model_ref(db)
    db.catalog_view("corpus_version_documents", m.CorpusVersionDocument.corpus_version_id == cv, "cvd")
    db.catalog_view("corpus_version_sources", m.CorpusVersionSource.corpus_version_id == cv, "cvs")
    db.catalog_view("model_training_documents", m.ModelTrainingDocument.model_id == info.id, "mtd")
    db.catalog_view("evaluations", m.EvaluationRecord.model_id == info.id, "evals")
    db.catalog_view("deployments", m.DeploymentRecord.model_id == info.id, "deps")
    has_reads = model_reads_view(db, info)
    # reads recorded with their documents need no chunk map; older rows (NULL doc_id) join it
    unnamed = db.con.execute("SELECT count(*) FROM reads WHERE doc_id IS NULL").fetchall()[0][0]
    if unnamed:
        db.lance_view(CHUNKS, columns=["chunk_id", "doc_id"], as_name="chunk_docs")
        db.con.execute("CREATE OR REPLACE TEMP VIEW named_reads AS SELECT r.role, r.chunk_id, "
                       "coalesce(r.doc_id, c.doc_id) AS doc_id FROM reads r "
                       "LEFT JOIN chunk_docs c USING (chunk_id)")
    else:  # chunk counts per document need only the doc_id column of the chunks table
        db.lance_view(CHUNKS, columns=["doc_id"], as_name="chunk_doc_ids")
        db.con.execute("CREATE OR REPLACE TEMP VIEW named_reads AS SELECT role, chunk_id, doc_id "
                       "FROM reads")
    corpus = _one(db, "SELECT c.name AS corpus, v.id AS corpus_version_id, v.digest, v.n_documents, "
                      "v.documents_lance_version, v.created_at FROM corpus_versions v "
                      "JOIN corpora c ON c.id = v.corpus_id WHERE v.id = ?", [cv])
    documents = db.arrow(
        f"WITH n AS (SELECT doc_id, count(*) AS chunks FROM {'chunk_docs' if unnamed else 'chunk_doc_ids'} "
        "GROUP BY doc_id), "
        "s AS (SELECT doc_id, string_agg(source_uri, ';' ORDER BY source_uri) AS sources FROM cvs GROUP BY doc_id) "
        "SELECT d.doc_id, coalesce(s.sources, '') AS sources, d.n_bytes AS bytes, "
        "coalesce(n.chunks, 0) AS chunks, "
        "CASE WHEN t.doc_id IS NULL THEN 'held-out' ELSE 'train' END AS role "
        "FROM cvd d LEFT JOIN s USING (doc_id) LEFT JOIN n USING (doc_id) "
        "LEFT JOIN mtd t USING (doc_id) ORDER BY d.doc_id")
    summary = {
        "model": info.ref, "model_id": info.id, "kind": info.kind, "key": info.key,
        "created_at": info.created_at, **corpus,
        "documents_trained": _count(documents, "role", "train"),
        "documents_held_out": _count(documents, "role", "held-out"),
        "training_chunks": info.n_training_chunks, "neighbour_chunks": info.n_neighbour_chunks,
        "reads_recorded": has_reads, "reads_digest": info.reads_digest,
        "neighbours_key": info.neighbours_key, "embedding_space_id": info.embedding_space_id,
        "tokenizer_id": info.tokenizer_id, "vocabulary_digest": info.vocabulary_digest,
        "code_version": info.code_version, "dagster_run_id": info.dagster_run_id,
        "mlflow_run_id": info.mlflow_run_id, "mlflow_model_name": info.mlflow_model_name,
        "mlflow_model_version": info.mlflow_model_version,
        "weights_sha256": info.weights_sha256, "checkpoint_sha256": info.checkpoint_sha256,
    }
    summary["retrieval_set"] = _one(
        db, "SELECT s.name AS retrieval_set, v.id AS version_id, v.digest, v.n_chunks, v.n_excluded, "
            "v.chunks_lance_version, v.embeddings_table, v.embeddings_lance_version, "
            "v.members_lance_version FROM retrieval_set_versions v "
            "JOIN retrieval_sets s ON s.id = v.retrieval_set_id WHERE v.id = ?",
        [info.retrieval_set_version_id]) if info.retrieval_set_version_id else None
    summary["index_build"] = _one(
        db, "SELECT id, factory, ntotal, sha256, manifest_sha256, build_dir, published "
            "FROM index_builds WHERE id = ?", [info.index_build_id]) if info.index_build_id else None
    summary["embedding_space"] = _one(
        db, "SELECT id, model_name, weights_digest, pooling, dim, max_tokens FROM embedding_spaces "
            "WHERE id = ?", [info.embedding_space_id]) if info.embedding_space_id else None
    summary["parent"] = _one(db, "SELECT model_ref(mlflow_model_name, mlflow_model_version, id) AS ref, "
                                 "id, kind, weights_sha256 FROM models WHERE id = ?",
                             [info.parent_model_id]) if info.parent_model_id else None
    tables = {"documents": documents}
    for name, role in (("training_chunks", "train"), ("neighbour_chunks", "neighbour")):
        tables[name] = db.arrow("SELECT chunk_id, doc_id FROM named_reads WHERE role = ? "
                                "ORDER BY chunk_id", [role])
    tables["evaluations"] = db.arrow(
        "SELECT id, setting, retrieval_set_version_id, eval_corpus_version_id, bits_per_byte, "
        "loss_per_token, tokens, mlflow_run_id, created_at FROM evals ORDER BY id")
    tables["deployments"] = db.arrow(
        "SELECT id, action, retrieval_set_version_id, endpoint, created_at AS started_at, ended_at "
        "FROM deps ORDER BY id")
    summary["evaluations"] = tables["evaluations"].num_rows
    summary["deployments"] = tables["deployments"].num_rows
    return ModelLineage(summary, tables)


def _count(table: pa.Table, column: str, value: str) -> int:
    return int(pc.sum(pc.equal(table.column(column), value)).as_py() or 0)


def resolve_documents(db: AuditDB, path_or_doc_id: str) -> list[str]:
    """Doc ids named by a doc id, or by a source path (relative to its corpus root, or absolute
    under a corpus's folder; `file.jsonl` matches its `file.jsonl#Ln` documents)."""
    with db.catalog.session() as s:
        if _DOC_ID.fullmatch(path_or_doc_id) and s.get(m.Document, path_or_doc_id) is not None:
            return [path_or_doc_id]
        wanted = {path_or_doc_id.removeprefix("./")}
        if os.path.isabs(path_or_doc_id):
            real = os.path.realpath(path_or_doc_id)
            for source in s.scalars(select(m.Corpus.source_uri)):
                relative = source_in_corpus(real, corpus_root(db.catalog.resolved_path(source)))
                if relative:
                    wanted.add(relative)
        found = set()
        for value in wanted:
            found.update(s.scalars(select(m.CorpusVersionSource.doc_id).where(
                (m.CorpusVersionSource.source_uri == value)
                | m.CorpusVersionSource.source_uri.startswith(value + "#", autoescape=True))))
            found.update(s.scalars(select(m.DocumentSource.doc_id).where(
                m.DocumentSource.source_uri == value)))
    for value in wanted:  # a purged document's paths are kept as hashes only
        found.update(p.doc_id for p in db.catalog.purges_by_source(value))
    if not found:
        raise LineageError(f"no document {path_or_doc_id!r}: neither a doc id nor a recorded "
                           "source path (try a path relative to its corpus folder)")
    return sorted(found)


_CHUNK_COLUMNS = ["chunk_id", "doc_id", "position", "content_hash"]


def _purged_chunks(db: AuditDB, doc_id: str | None = None, chunk_id: int | None = None) -> pa.Table:
    """Chunk rows of purged documents, from their purge records (LanceDB no longer has them)."""
    rows = [(int(c[0]), p.doc_id, int(c[1]), c[2]) for p in db.catalog.purges()
            if doc_id in (None, p.doc_id) for c in p.chunks if chunk_id in (None, int(c[0]))]
    return pa.table({name: pa.array([r[i] for r in rows], kind) for i, (name, kind) in enumerate(
        zip(_CHUNK_COLUMNS, (pa.int64(), pa.string(), pa.int32(), pa.string())))})


def _fwd_chunks(db: AuditDB, where, doc_id: str | None = None, chunk_id: int | None = None) -> None:
    db.lance_view(CHUNKS, where=where.to_sql(), columns=_CHUNK_COLUMNS, as_name="fwd_chunks")
    if not db.rows("SELECT count(*) AS n FROM fwd_chunks")[0]["n"]:
        db.register("fwd_chunks", _purged_chunks(db, doc_id, chunk_id))


def forward_document(db: AuditDB, doc_id: str) -> ForwardLineage:
    """Where one document went: every corpus version, set version, index, model, deployment."""
    _fwd_chunks(db, col("doc_id") == lit(doc_id), doc_id=doc_id)
    return _forward(db, {"doc_id": doc_id}, doc_id, None)


def forward_chunk(db: AuditDB, chunk_id: int) -> ForwardLineage:
    _fwd_chunks(db, col("chunk_id") == lit(int(chunk_id)), chunk_id=int(chunk_id))
    found = db.rows("SELECT doc_id, position FROM fwd_chunks")
    if not found:
        raise LineageError(f"no chunk {chunk_id} in the feature store's chunks table")
    return _forward(db, {"chunk_id": int(chunk_id), **found[0]}, found[0]["doc_id"], int(chunk_id))


def _forward(db: AuditDB, head: dict, doc_id: str, chunk_id: int | None) -> ForwardLineage:
    chunk_rows = db.rows("SELECT chunk_id, content_hash FROM fwd_chunks")
    chunk_ids = [r["chunk_id"] for r in chunk_rows]
    for name in ("corpus_versions", "corpora", "retrieval_sets", "retrieval_set_versions",
                 "index_builds"):
        db.catalog_view(name)
    _model_ref(db)
    db.catalog_view("corpus_version_documents", m.CorpusVersionDocument.doc_id == doc_id, "cvd")
    db.catalog_view("corpus_version_sources", m.CorpusVersionSource.doc_id == doc_id, "cvs")
    db.catalog_view("model_training_documents", m.ModelTrainingDocument.doc_id == doc_id, "mtd")
    # every scope that covers these chunks: by id, by their text (content hash), by the document
    db.catalog_view("exclusions", m.Exclusion.chunk_id.in_(chunk_ids)
                    | ((m.Exclusion.scope == "content_hash")
                       & m.Exclusion.target.in_(sorted({r["content_hash"] for r in chunk_rows})))
                    | ((m.Exclusion.scope == "document") & (m.Exclusion.target == doc_id)), "excl")
    db.catalog_view("deployments")
    id_filter = col("chunk_id").isin([int(c) for c in chunk_ids]) if chunk_ids else None
    if id_filter is None:
        db.lance_view(MEMBERS, where="false", as_name="fwd_members")
        db.lance_view("model_reads", where="false", as_name="fwd_reads")
    else:
        db.lance_view(MEMBERS, where=id_filter.to_sql(), columns=["set_digest", "chunk_id"],
                      as_name="fwd_members")
        db.register("fwd_members", pa.concat_tables([db.arrow("SELECT set_digest, chunk_id FROM fwd_members"),
                                                     _purged_members(db, set(chunk_ids))]))
        db.lance_view("model_reads", where=id_filter.to_sql(), as_name="fwd_reads")
    lists = {"chunks": db.rows("SELECT chunk_id, position FROM fwd_chunks ORDER BY position")}
    lists["corpus_versions"] = db.rows(
        "SELECT c.name AS corpus, v.id AS corpus_version_id, v.created_at, "
        "coalesce((SELECT string_agg(source_uri, ';' ORDER BY source_uri) FROM cvs "
        "          WHERE cvs.corpus_version_id = v.id), '') AS sources "
        "FROM cvd JOIN corpus_versions v ON v.id = cvd.corpus_version_id "
        "JOIN corpora c ON c.id = v.corpus_id ORDER BY v.id")
    lists["retrieval_set_versions"] = db.rows(
        "SELECT s.name AS retrieval_set, v.id AS version_id, v.digest, v.created_at, "
        "count(DISTINCT f.chunk_id) AS chunks FROM fwd_members f "
        "JOIN retrieval_set_versions v ON v.digest = f.set_digest "
        "JOIN retrieval_sets s ON s.id = v.retrieval_set_id GROUP BY ALL ORDER BY v.id")
    lists["index_builds"] = db.rows(
        "SELECT b.id, s.name AS retrieval_set, b.retrieval_set_version_id, b.sha256, b.published "
        "FROM index_builds b JOIN retrieval_set_versions v ON v.id = b.retrieval_set_version_id "
        "JOIN retrieval_sets s ON s.id = v.retrieval_set_id "
        "WHERE v.digest IN (SELECT set_digest FROM fwd_members) ORDER BY b.id")
    # as text: its chunk among a model's recorded training reads, or (models recorded before
    # reads were) its document among the model's training documents
    text_filter = "r.chunk_id = ?" if chunk_id is not None else "TRUE"
    lists["models_trained_on_it"] = db.rows(
        "SELECT model_ref(x.mlflow_model_name, x.mlflow_model_version, x.id) AS model, x.id, x.kind, "
        "x.created_at FROM models x WHERE x.id IN ("
        f"  SELECT r.model_id FROM fwd_reads r WHERE r.role = 'train' AND {text_filter}) "
        "OR (x.reads_table IS NULL AND x.id IN (SELECT model_id FROM mtd)) ORDER BY x.id",
        [chunk_id] if chunk_id is not None else [])
    lists["models_read_as_neighbour"] = db.rows(
        "SELECT model_ref(x.mlflow_model_name, x.mlflow_model_version, x.id) AS model, x.id, x.kind, "
        "count(*) AS chunks_read FROM fwd_reads r JOIN models x ON x.id = r.model_id "
        "WHERE r.role = 'neighbour' GROUP BY ALL ORDER BY x.id")
    lists["deployments"] = db.rows(
        "SELECT d.id, model_ref(x.mlflow_model_name, x.mlflow_model_version, x.id) AS model, "
        "s.name AS retrieval_set, d.retrieval_set_version_id, d.endpoint, "
        "d.created_at AS started_at, d.ended_at FROM deployments d "
        "JOIN models x ON x.id = d.model_id "
        "JOIN retrieval_set_versions v ON v.id = d.retrieval_set_version_id "
        "JOIN retrieval_sets s ON s.id = v.retrieval_set_id "
        "WHERE v.digest IN (SELECT set_digest FROM fwd_members) ORDER BY d.id")
    lists["exclusions"] = db.rows(
        "SELECT id, scope, target, chunk_id, reason, policy, scorer, score, created_by, created_at, "
        "revoked_at, revoked_by, revoke_reason FROM excl ORDER BY id")
    lists["purges"] = [{"id": p.id, "doc_id": p.doc_id, "reason": p.reason, "created_by": p.created_by,
                        "created_at": p.created_at, "status": p.status, "completed_at": p.completed_at}
                       for p in db.catalog.purges() if p.doc_id == doc_id]
    summary = {**head, "chunks": len(lists["chunks"]),
               **{name: len(rows) for name, rows in lists.items() if name != "chunks"}}
    summary["sources"] = sorted({s for v in lists["corpus_versions"] for s in v["sources"].split(";") if s})
    summary["may_need_retraining"] = _retraining(lists)
    return ForwardLineage(summary, lists)


def _purged_members(db: AuditDB, chunk_ids: set[int]) -> pa.Table:
    """(set_digest, chunk_id) of the set versions that held purged chunks, as their purge recorded."""
    rows = [(digest, c) for p in db.catalog.purges() for digest, ids in p.held_by.items()
            for c in ids if c in chunk_ids]
    return pa.table({"set_digest": pa.array([r[0] for r in rows], pa.string()),
                     "chunk_id": pa.array([r[1] for r in rows], pa.int64())})


def _retraining(lists: dict[str, list[dict]]) -> list[str]:
    """Models that read the text (as training text or as a neighbour): retraining without it is
    the only way to take it out of their weights."""
    return sorted({r["model"] for name in ("models_trained_on_it", "models_read_as_neighbour")
                   for r in lists.get(name, [])})


def exclusion_report(db: AuditDB, exclusion_id: int) -> ForwardLineage:
    """Everything one exclusion covers, whatever its scope: the chunks (for a content hash, every
    chunk with that text), and for them the set versions, index builds and deployments that held
    them and the models that read them (which may need retraining); and who was shown its text
    on request (`reads`, the exclusion log)."""
    record = next((e for e in db.catalog.list_exclusions() if e.id == exclusion_id), None)
    if record is None:
        raise LineageError(f"no exclusion {exclusion_id} (see `retro-ops exclude list`)")
    if record.scope == "document":
        parts = [forward_document(db, record.target)]
    elif record.scope == "chunk":
        parts = [forward_chunk(db, int(record.target))]
    else:
        db.lance_view(CHUNKS, where=(col("content_hash") == lit(record.target)).to_sql(),
                      columns=["chunk_id"], as_name="hash_chunks")
        ids = {r["chunk_id"] for r in db.rows("SELECT chunk_id FROM hash_chunks")}
        ids |= {int(c[0]) for p in db.catalog.purges() for c in p.chunks if c[2] == record.target}
        parts = [forward_chunk(db, c) for c in sorted(ids)]
    lists: dict[str, list[dict]] = {}
    for part in parts:
        for name, rows in part.lists.items():
            merged = lists.setdefault(name, [])
            merged += [r for r in rows if r not in merged]
    lists["exclusions"] = [e for e in lists.get("exclusions", []) if e["id"] == exclusion_id] or \
        [record.as_dict()]
    lists["reads"] = db.catalog.exclusion_reads(exclusion_id)  # its text shown to an auditor
    summary = {"exclusion_id": record.id, "scope": record.scope, "target": record.target,
               "reason": record.reason, "policy": record.policy, "created_by": record.created_by,
               "created_at": record.created_at, "revoked_at": record.revoked_at,
               "chunks_covered": len(lists.get("chunks", [])),
               **{name: len(rows) for name, rows in lists.items() if name not in ("chunks", "exclusions")},
               "may_need_retraining": _retraining(lists)}
    return ForwardLineage(summary, lists)


# -- generations (the generation log): which served answers read a chunk --------------------------
def with_generations(db: AuditDB, found: ForwardLineage) -> ForwardLineage:
    """`found` plus the logged generations that retrieved any of its chunks (`generations`)."""
    from retro_ops.generations.search import retrieving

    chunk_ids = [c["chunk_id"] for c in found.lists.get("chunks", [])]
    found.lists["generations"] = retrieving(db.store, chunk_ids)
    found.summary["generations"] = len(found.lists["generations"])
    return found


def generations_affected_by_exclusion(db: AuditDB, exclusion_id: int) -> list[dict]:
    """The logged generations that retrieved a chunk this exclusion covers (oldest first); the
    chunks are those of `exclusion_report`, so a purged document's chunks still count."""
    return with_generations(db, exclusion_report(db, exclusion_id)).lists["generations"]
