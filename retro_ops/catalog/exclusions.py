"""Exclusions: audited decisions that text must never be retrieved, read at every query.

Three scopes: a chunk id; a content hash (that exact chunk text in every document and corpus,
now and later); a document (takedown). A revoke is itself audited and never deletes the row.
`active_exclusions` is what the retriever reads per query: one small indexed SELECT. If it
cannot be read the caller gets `ExclusionListError` and must refuse to answer (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from retro_ops.catalog import models as m
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
    """What a query must drop, as of one read of the catalog."""

    chunk_ids: frozenset[int] = frozenset()
    content_hashes: frozenset[str] = frozenset()
    doc_ids: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.chunk_ids) + len(self.content_hashes) + len(self.doc_ids)

    def drops(self, chunk_id: int, content_hash: str, doc_id: str) -> bool:
        return (chunk_id in self.chunk_ids or content_hash in self.content_hashes
                or doc_id in self.doc_ids)


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
                rows = s.execute(select(m.Exclusion.scope, m.Exclusion.target)
                                 .where(m.Exclusion.revoked_at.is_(None))).all()
        except SQLAlchemyError as exc:
            raise ExclusionListError(f"cannot read the exclusion list ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0]}); refusing to retrieve") from exc
        by_scope: dict[str, set] = {scope: set() for scope in SCOPES}
        for scope, target in rows:
            by_scope.setdefault(scope, set()).add(target)
        return ActiveExclusions(frozenset(int(t) for t in by_scope["chunk"]),
                                frozenset(by_scope["content_hash"]), frozenset(by_scope["document"]))

    def excluded_chunk_ids(self) -> set[int]:
        return set(self.active_exclusions().chunk_ids)
