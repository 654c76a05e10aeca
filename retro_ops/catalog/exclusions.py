"""Exclusions: audited decisions that text must never be retrieved, read at every query.

Three scopes: a chunk id; a content hash (that exact chunk text in every document and corpus,
now and later); a document (takedown). A revoke is itself audited and never deletes the row.
`active_exclusions` is what the retriever reads per query: one small indexed SELECT. If it
cannot be read the caller gets `ExclusionListError` and must refuse to answer (fail closed).
A purge (erasing the text, not only hiding it) is recorded in `purges`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from retro_ops.catalog import tables as m
from retro_ops.errors import ExclusionError, ExclusionListError

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
