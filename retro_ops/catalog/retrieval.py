"""Catalog records for retrieval sets, their versions, exclusions and index builds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from retro_ops.catalog import tables as m
from retro_ops.errors import RetrievalSetError, UnknownRetrievalSetError
from retro_ops.ids import validate_name


@dataclass(frozen=True)
class RetrievalSetInfo:
    name: str
    corpora: list[str]
    description: str
    created_at: datetime
    latest_version_id: int | None = None
    n_chunks: int | None = None
    n_versions: int = 0


@dataclass(frozen=True)
class RetrievalSetVersionInfo:
    id: int
    retrieval_set: str
    digest: str
    n_chunks: int
    n_excluded: int
    corpus_version_ids: list[int]
    embedding_space_id: str
    chunks_lance_version: int
    embeddings_table: str
    embeddings_lance_version: int
    members_lance_version: int
    created_at: datetime


@dataclass(frozen=True)
class IndexBuildRecord:
    id: int
    retrieval_set: str
    retrieval_set_version_id: int
    sha256: str
    manifest_sha256: str
    published: bool
    build_dir: str


def _version_info(name: str, v: m.RetrievalSetVersion) -> RetrievalSetVersionInfo:
    return RetrievalSetVersionInfo(
        v.id, name, v.digest, v.n_chunks, v.n_excluded, list(v.corpus_version_ids),
        v.embedding_space_id, v.chunks_lance_version, v.embeddings_table,
        v.embeddings_lance_version, v.members_lance_version, v.created_at)


class RetrievalCatalogMixin:
    """Mixed into `Catalog` (which provides `session()` and `_corpus_row`)."""

    def create_retrieval_set(self, name: str, corpora: list[str],
                             description: str = "") -> RetrievalSetInfo:
        """Define a set over corpora; re-creating it identically is a no-op."""
        validate_name(name, "retrieval set")
        if not corpora:
            raise RetrievalSetError(f"retrieval set {name!r} needs at least one corpus")
        with self.session() as s:
            for corpus in corpora:
                self._corpus_row(s, corpus)  # raises UnknownCorpusError with the known names
            row = s.scalar(select(m.RetrievalSet).where(m.RetrievalSet.name == name))
            if row is None:
                s.add(m.RetrievalSet(name=name, corpora=list(corpora), description=description))
            elif list(row.corpora) != list(corpora):
                raise RetrievalSetError(f"retrieval set {name!r} already exists over corpora "
                                        f"{', '.join(row.corpora)}; choose another name")
        return self.get_retrieval_set(name)

    def _set_row(self, s: Session, name: str) -> m.RetrievalSet:
        row = s.scalar(select(m.RetrievalSet).where(m.RetrievalSet.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(m.RetrievalSet.name).order_by(m.RetrievalSet.name)))
            raise UnknownRetrievalSetError(
                f"unknown retrieval set {name!r} (known: {known or 'none'})")
        return row

    def _versions(self, s: Session, set_id: int) -> list[m.RetrievalSetVersion]:
        return list(s.scalars(select(m.RetrievalSetVersion)
                              .where(m.RetrievalSetVersion.retrieval_set_id == set_id)
                              .order_by(m.RetrievalSetVersion.id)))

    def _set_info(self, s: Session, row: m.RetrievalSet) -> RetrievalSetInfo:
        versions = self._versions(s, row.id)
        latest = versions[-1] if versions else None
        return RetrievalSetInfo(row.name, list(row.corpora), row.description, row.created_at,
                                latest.id if latest else None,
                                latest.n_chunks if latest else None, len(versions))

    def get_retrieval_set(self, name: str) -> RetrievalSetInfo:
        with self.session() as s:
            return self._set_info(s, self._set_row(s, name))

    def list_retrieval_sets(self) -> list[RetrievalSetInfo]:
        with self.session() as s:
            rows = s.scalars(select(m.RetrievalSet).order_by(m.RetrievalSet.name))
            return [self._set_info(s, r) for r in rows]

    def record_retrieval_set_version(self, name: str, **fields) -> RetrievalSetVersionInfo:
        with self.session() as s:
            row = m.RetrievalSetVersion(retrieval_set_id=self._set_row(s, name).id, **fields)
            s.add(row)
            s.flush()
            return _version_info(name, row)

    def latest_retrieval_set_version(self, name: str) -> RetrievalSetVersionInfo:
        with self.session() as s:
            versions = self._versions(s, self._set_row(s, name).id)
            if not versions:
                raise RetrievalSetError(f"retrieval set {name!r} has no version yet (run "
                                        f"`retro-ops materialize --set {name}`)")
            return _version_info(name, versions[-1])

    def retrieval_set_version(self, version_id: int) -> RetrievalSetVersionInfo:
        with self.session() as s:
            row = s.get(m.RetrievalSetVersion, version_id)
            if row is None:
                raise RetrievalSetError(f"no retrieval-set version {version_id}")
            name = s.get(m.RetrievalSet, row.retrieval_set_id).name
            return _version_info(name, row)

    # -- index builds ---------------------------------------------------------
    def record_index_build(self, version_id: int, *, build_dir: str, factory: str, ntotal: int,
                           sha256: str, manifest_sha256: str, manifest: dict,
                           run_id: str | None = None) -> int:
        with self.session() as s:
            row = m.IndexBuild(retrieval_set_version_id=version_id, build_dir=build_dir,
                               factory=factory, ntotal=ntotal, sha256=sha256,
                               manifest_sha256=manifest_sha256, manifest=manifest, run_id=run_id)
            s.add(row)
            s.flush()
            return row.id

    def mark_index_published(self, build_id: int, build_dir: str) -> None:
        with self.session() as s:
            row = s.get(m.IndexBuild, build_id)
            row.published, row.build_dir = True, self.stored_path(build_dir)  # home-relative

    def trusted_index_build(self, retrieval_set: str, version_id: int, sha256: str,
                            manifest_sha256: str) -> IndexBuildRecord | None:
        """The record of a build of this set's version with these index and manifest digests;
        None when retro-ops never built it for this set (copied from another set, tampered)."""
        with self.session() as s:
            row = s.scalars(
                select(m.IndexBuild)
                .join(m.RetrievalSetVersion,
                      m.RetrievalSetVersion.id == m.IndexBuild.retrieval_set_version_id)
                .join(m.RetrievalSet, m.RetrievalSet.id == m.RetrievalSetVersion.retrieval_set_id)
                .where(m.RetrievalSet.name == retrieval_set, m.IndexBuild.sha256 == sha256,
                       m.IndexBuild.retrieval_set_version_id == version_id,
                       m.IndexBuild.manifest_sha256 == manifest_sha256)
                .order_by(m.IndexBuild.id.desc())).first()
            return None if row is None else IndexBuildRecord(
                row.id, retrieval_set, version_id, row.sha256, manifest_sha256, row.published,
                self.resolved_path(row.build_dir))

    def is_trusted_index(self, retrieval_set: str, version_id: int, sha256: str,
                         manifest_sha256: str) -> bool:
        """Only an index this catalog recorded building for this very set may be loaded."""
        return self.trusted_index_build(retrieval_set, version_id, sha256, manifest_sha256) is not None
