"""Exclusions: audited decisions that text must never be retrieved, read at every query.

Three scopes: a chunk id; a content hash (that exact chunk text in every document and corpus,
now and later); a document (takedown). A revoke is itself audited and never deletes the row.
`active_exclusions` is what the retriever reads per query: one small indexed SELECT. If it
cannot be read the caller gets `ExclusionListError` and must refuse to answer (fail closed).

A purge goes further than a document exclusion: `begin_purge` records the intent (and the
exclusion) before anything is deleted; `finish_purge` marks it done. The catalog then keeps
hashes only: `scrub_document_sources` replaces the purged documents' source paths with hashes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError

from retro_ops.catalog import tables as m
from retro_ops.errors import ExclusionError, ExclusionListError
from retro_ops.ids import set_digest, sha256_hex

Scope = Literal["chunk", "content_hash", "document"]
SCOPES: tuple[str, ...] = ("chunk", "content_hash", "document")


@dataclass(frozen=True)
class ExclusionRecord:
    id: int
    scope: str
    target: str
    reason: str
    policy: str
    scorer: str | None
    score: float | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class ActiveExclusions:
    """What a query must drop, as of one read of the catalog. `ids` maps (scope, target) to the
    exclusion's id, so a caller can say which exclusion covers a chunk."""

    chunk_ids: frozenset[int] = frozenset()
    content_hashes: frozenset[str] = frozenset()
    doc_ids: frozenset[str] = frozenset()
    ids: Mapping[tuple[str, str], int] = field(default_factory=dict, compare=False, hash=False)

    def __len__(self) -> int:
        return len(self.chunk_ids) + len(self.content_hashes) + len(self.doc_ids)

    def drops(self, chunk_id: int, content_hash: str | None, doc_id: str) -> bool:
        return (chunk_id in self.chunk_ids or content_hash in self.content_hashes
                or doc_id in self.doc_ids)

    def covering(self, chunk_id: int, content_hash: str | None, doc_id: str) -> list[int]:
        """The ids of the exclusions in force over this chunk: by its id, its text, its document
        (in that order; empty: not excluded). `content_hash` None: unknown (the chunk is gone)."""
        keys = (("chunk", str(chunk_id)), ("content_hash", content_hash), ("document", doc_id))
        return [self.ids[key] for key in keys if key[1] is not None and key in self.ids]


@dataclass(frozen=True)
class NewExclusion:
    scope: Scope
    target: str
    reason: str
    policy: str = "manual"
    scorer: str | None = None
    score: float | None = None


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


def _record(row: m.Exclusion) -> ExclusionRecord:
    return ExclusionRecord(row.id, row.scope, row.target, row.reason, row.policy, row.scorer,
                           row.score, row.created_by, row.created_at, row.revoked_at,
                           row.revoked_by, row.revoke_reason)


def _check(item: NewExclusion) -> None:
    if item.scope not in SCOPES:
        raise ExclusionError(f"unknown exclusion scope {item.scope!r} (one of {', '.join(SCOPES)})")
    if not item.reason.strip():
        raise ExclusionError(f"exclusion of {item.scope} {item.target!r} needs a reason")
    if item.scope == "chunk" and not item.target.lstrip("-").isdigit():
        raise ExclusionError(f"chunk exclusion target {item.target!r} is not a chunk id")


class ExclusionCatalogMixin:
    """Mixed into `Catalog` (which provides `session()`)."""

    def record_exclusions(self, items: list[NewExclusion], *, actor: str) -> list[int]:
        """Record exclusions in one transaction; an active one with the same scope and target is
        kept (not doubled) and its id returned."""
        for item in items:
            _check(item)
        ids = []
        with self.session() as s:
            for item in items:
                existing = s.scalar(select(m.Exclusion.id).where(
                    m.Exclusion.scope == item.scope, m.Exclusion.target == item.target,
                    m.Exclusion.revoked_at.is_(None)))
                if existing is not None:
                    ids.append(existing)
                    continue
                row = m.Exclusion(scope=item.scope, target=item.target, reason=item.reason,
                                  policy=item.policy, scorer=item.scorer, score=item.score,
                                  created_by=actor,
                                  chunk_id=int(item.target) if item.scope == "chunk" else None)
                s.add(row)
                s.flush()
                ids.append(row.id)
        return ids

    def add_exclusions(self, chunk_ids: list[int], *, reason: str, policy: str,
                       created_by: str, score: float | None = None) -> int:
        """Chunk-scope exclusions (the original interface, kept for callers and tests)."""
        self.record_exclusions([NewExclusion("chunk", str(c), reason, policy, None, score)
                                for c in chunk_ids], actor=created_by)
        return len(chunk_ids)

    def revoke_exclusion(self, exclusion_id: int, *, reason: str, actor: str) -> ExclusionRecord:
        if not reason.strip():
            raise ExclusionError(f"revoking exclusion {exclusion_id} needs a reason")
        with self.session() as s:
            row = s.get(m.Exclusion, exclusion_id)
            if row is None:
                raise ExclusionError(f"no exclusion {exclusion_id}")
            if row.policy == "purge":
                raise ExclusionError(f"exclusion {exclusion_id} belongs to a purge: the document's "
                                     "text is erased and it can never come back")
            if row.revoked_at is not None:
                raise ExclusionError(f"exclusion {exclusion_id} was already revoked at "
                                     f"{row.revoked_at} by {row.revoked_by}")
            row.revoked_at, row.revoked_by, row.revoke_reason = m.utcnow(), actor, reason
            s.flush()
            return _record(row)

    def list_exclusions(self, *, include_revoked: bool = True) -> list[ExclusionRecord]:
        with self.session() as s:
            query = select(m.Exclusion).order_by(m.Exclusion.id)
            if not include_revoked:
                query = query.where(m.Exclusion.revoked_at.is_(None))
            return [_record(r) for r in s.scalars(query)]

    def active_exclusions(self) -> ActiveExclusions:
        """Every exclusion in force now; `ExclusionListError` when the list cannot be read."""
        try:
            with self.session() as s:
                rows = s.execute(select(m.Exclusion.id, m.Exclusion.scope, m.Exclusion.target)
                                 .where(m.Exclusion.revoked_at.is_(None))
                                 .order_by(m.Exclusion.id)).all()
        except SQLAlchemyError as exc:
            raise ExclusionListError(f"cannot read the exclusion list ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0]}); refusing to retrieve") from exc
        by_scope: dict[str, set] = {scope: set() for scope in SCOPES}
        ids: dict[tuple[str, str], int] = {}
        for exclusion_id, scope, target in rows:
            by_scope.setdefault(scope, set()).add(target)
            ids.setdefault((scope, target), exclusion_id)
        return ActiveExclusions(frozenset(int(t) for t in by_scope["chunk"]),
                                frozenset(by_scope["content_hash"]), frozenset(by_scope["document"]),
                                ids)

    def record_exclusion_reads(self, reads: list[tuple[int, int]], *, actor: str,
                               purpose: str) -> int:
        """Audit excluded text shown on request: one row per (exclusion id, chunk id), written
        (committed) before the text is shown. Returns the rows written."""
        if not actor.strip():
            raise ExclusionError(f"showing excluded text ({purpose}) needs an actor")
        with self.session() as s:
            s.add_all(m.ExclusionRead(exclusion_id=e, chunk_id=int(c), actor=actor, purpose=purpose)
                      for e, c in sorted(set(reads)))
        return len(set(reads))

    def exclusion_reads(self, exclusion_id: int | None = None) -> list[dict]:
        """Who was shown excluded text, when and through which command (oldest first)."""
        with self.session() as s:
            query = select(m.ExclusionRead).order_by(m.ExclusionRead.id)
            if exclusion_id is not None:
                query = query.where(m.ExclusionRead.exclusion_id == exclusion_id)
            return [{"id": r.id, "exclusion_id": r.exclusion_id, "chunk_id": r.chunk_id,
                     "actor": r.actor, "purpose": r.purpose, "created_at": r.created_at}
                    for r in s.scalars(query)]

    def excluded_chunk_ids(self) -> set[int]:
        return set(self.active_exclusions().chunk_ids)

    # -- purges ------------------------------------------------------------------------------
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
                                  .order_by(m.CorpusVersion.id.desc()).limit(1))
                if latest is None:
                    continue
                docs = s.execute(select(m.CorpusVersionDocument.doc_id, m.CorpusVersionDocument.n_bytes)
                                 .where(m.CorpusVersionDocument.corpus_version_id == latest.id)).all()
                if not gone & {d for d, _ in docs}:
                    continue
                kept = [(d, n) for d, n in docs if d not in gone]
                version = m.CorpusVersion(corpus_id=corpus.id, digest=set_digest(d for d, _ in kept),
                                          n_documents=len(kept), n_issues=latest.n_issues,
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
