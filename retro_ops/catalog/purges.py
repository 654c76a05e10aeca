"""Purges: the catalog's record of documents whose text was erased, and what erasing needs here.

A purge goes further than a document exclusion: `begin_purge` records the document exclusion and
then the intent (chunk ids, content hashes, the retrieval-set versions that held it, hashes of
its source paths) before anything is deleted; `finish_purge` marks it done with its report. The
catalog then keeps hashes only: `scrub_document_sources` replaces the purged documents' source
paths with hashes, and `compact_storage` (SQLite VACUUM) removes the overwritten values from the
file. The erasure itself, across every store, is `retro_ops.erasure.purge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update

from retro_ops.catalog import tables as m
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.errors import ExclusionError
from retro_ops.ids import set_digest, sha256_hex


@dataclass(frozen=True)
class PurgeRecord:
    """One purged document (hashes and ids only; see `tables.PurgedDocument`)."""

    id: int
    doc_id: str
    exclusion_id: int | None
    reason: str
    created_by: str
    created_at: datetime
    status: str
    completed_at: datetime | None
    source_hashes: list[str]
    chunks: list[list]  # [chunk_id, position, content_hash]
    held_by: dict[str, list[int]]  # set digest -> chunk ids it held
    report: dict | None

    @property
    def chunk_ids(self) -> list[int]:
        return [int(c[0]) for c in self.chunks]

    @property
    def content_hashes(self) -> list[str]:
        return sorted({c[2] for c in self.chunks})

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def source_hash(source_uri: str) -> str:
    """How a purged document's source path is remembered: its sha256, never the path."""
    return sha256_hex(source_uri)


def _purge(row: m.PurgedDocument) -> PurgeRecord:
    return PurgeRecord(row.id, row.doc_id, row.exclusion_id, row.reason, row.created_by,
                       row.created_at, row.status, row.completed_at, list(row.source_hashes),
                       [list(c) for c in row.chunks], {k: list(v) for k, v in row.held_by.items()},
                       row.report)


class PurgeCatalogMixin:
    """Mixed into `Catalog` (which provides `session()`, `engine` and `record_exclusions`)."""

    def begin_purge(self, doc_id: str, *, reason: str, actor: str, source_uris: list[str],
                    chunks: list[list], held_by: dict[str, list[int]]) -> PurgeRecord:
        """Record the document exclusion, then the intent to purge `doc_id`, before anything is
        deleted. A purge already recorded is returned as it is (a rerun); a crash between the two
        leaves the exclusion alone, which the rerun finds and keeps (not doubled)."""
        if not reason.strip():
            raise ExclusionError(f"purging document {doc_id} needs a reason")
        with self.session() as s:
            row = s.scalar(select(m.PurgedDocument).where(m.PurgedDocument.doc_id == doc_id))
            if row is not None:
                return _purge(row)
        [exclusion_id] = self.record_exclusions(
            [NewExclusion("document", doc_id, reason, policy="purge")], actor=actor)
        hashes = sorted({source_hash(u) for u in source_uris} | {source_hash(u.split("#", 1)[0])
                                                                 for u in source_uris})
        with self.session() as s:
            row = m.PurgedDocument(doc_id=doc_id, exclusion_id=exclusion_id, reason=reason,
                                   created_by=actor, status="pending", source_hashes=hashes,
                                   chunks=chunks, held_by=held_by)
            s.add(row)
            s.flush()
            return _purge(row)

    def finish_purge(self, purge_id: int, report: dict) -> PurgeRecord:
        with self.session() as s:
            row = s.get(m.PurgedDocument, purge_id)
            row.status, row.completed_at, row.report = "done", m.utcnow(), report
            s.flush()
            return _purge(row)

    def record_lost_snapshots(self, purge_ids: list[int], snapshots: list[dict]) -> list[dict]:
        """Mark LanceDB snapshots (table, tag, version) a purge is about to remove as no longer
        reproducible, in the report of each of `purge_ids`; returns every snapshot those purges
        have marked (a rerun after a kill adds none twice and forgets none)."""
        lost: list[dict] = []
        with self.session() as s:
            for row in s.scalars(select(m.PurgedDocument).where(m.PurgedDocument.id.in_(purge_ids))):
                known = list((row.report or {}).get("snapshots_lost", []))
                known += [{**snap, "reproducible": False} for snap in snapshots
                          if {**snap, "reproducible": False} not in known]
                row.report = {**(row.report or {}), "snapshots_lost": known}
                lost += [snap for snap in known if snap not in lost]
        return lost

    def lost_snapshots(self) -> list[dict]:
        """Every LanceDB snapshot (a tagged version) a purge removed, with the purge's id."""
        return [{**snap, "purge_id": p.id} for p in self.purges()
                for snap in (p.report or {}).get("snapshots_lost", [])]

    def purges(self, *, status: str | None = None) -> list[PurgeRecord]:
        with self.session() as s:
            query = select(m.PurgedDocument).order_by(m.PurgedDocument.id)
            if status is not None:
                query = query.where(m.PurgedDocument.status == status)
            return [_purge(r) for r in s.scalars(query)]

    def purged_documents(self) -> dict[str, PurgeRecord]:
        """doc_id -> its purge: what the next materialization must refuse to store again."""
        return {p.doc_id: p for p in self.purges()}

    def purges_by_source(self, source_uri: str) -> list[PurgeRecord]:
        """Purges of documents read from this (corpus-relative) path."""
        wanted = source_hash(source_uri)
        return [p for p in self.purges() if wanted in p.source_hashes]

    def scrub_document_sources(self, doc_ids: list[str]) -> int:
        """Replace the source paths of these documents with `purged:<sha256 prefix>` (a path can
        name a person); returns the rows changed. Idempotent."""
        changed = 0
        with self.session() as s:
            for table in (m.DocumentSource, m.CorpusVersionSource):
                rows = s.execute(select(table.id, table.source_uri).where(
                    table.doc_id.in_(doc_ids), ~table.source_uri.startswith("purged:"))).all()
                for row_id, uri in rows:
                    s.execute(update(table).where(table.id == row_id)
                              .values(source_uri=f"purged:{source_hash(uri)[:16]}"))
                changed += len(rows)
        return changed

    def drop_from_latest_corpus_versions(self, doc_ids: list[str], *, documents_lance_version: int,
                                         run_id: str | None = None) -> list[int]:
        """A new version of every corpus whose latest version holds one of `doc_ids`: the same
        documents and sources minus those (the digest a re-materialization of the folder will
        find, the purged files being refused), so training and set builds stop naming them at
        once. Idempotent: a corpus whose latest version lacks them gets none. Returns the ids."""
        gone, created = set(doc_ids), []
        with self.session() as s:
            for corpus in s.scalars(select(m.Corpus)):
                latest = s.scalar(select(m.CorpusVersion).where(m.CorpusVersion.corpus_id == corpus.id)
                                  .order_by(m.CorpusVersion.seq.desc()).limit(1))
                if latest is None:
                    continue
                docs = s.execute(select(m.CorpusVersionDocument.doc_id, m.CorpusVersionDocument.n_bytes)
                                 .where(m.CorpusVersionDocument.corpus_version_id == latest.id)).all()
                if not gone & {d for d, _ in docs}:
                    continue
                kept = [(d, n) for d, n in docs if d not in gone]
                version = m.CorpusVersion(corpus_id=corpus.id, seq=latest.seq + 1,
                                          digest=set_digest(d for d, _ in kept), n_documents=len(kept),
                                          n_issues=latest.n_issues,
                                          documents_lance_version=documents_lance_version, run_id=run_id)
                s.add(version)
                s.flush()
                s.add_all(m.CorpusVersionDocument(corpus_version_id=version.id, doc_id=d, n_bytes=n)
                          for d, n in kept)
                s.add_all(m.CorpusVersionSource(corpus_version_id=version.id, doc_id=d, source_uri=u)
                          for d, u in s.execute(select(m.CorpusVersionSource.doc_id, m.CorpusVersionSource.source_uri)
                                                .where(m.CorpusVersionSource.corpus_version_id == latest.id)).all()
                          if d not in gone)
                created.append(version.id)
        return created

    def compact_storage(self) -> None:
        """SQLite keeps overwritten values in free pages and its WAL until VACUUM and a truncating
        checkpoint; a server database (Postgres) reclaims them itself (VACUUM there is the DBA's)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM"))
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
