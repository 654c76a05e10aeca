"""The catalog: corpora, their versions and documents, embedding spaces, feature versions.

`Catalog.open(url)` migrates the database to the newest schema on first use (SQLite under the
home folder by default, Postgres when `RETRO_OPS_CATALOG_URL` says so) and hands out plain
dataclasses, never ORM objects bound to a closed session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from retro_ops.catalog import models as m
from retro_ops.catalog.model_records import ModelCatalogMixin
from retro_ops.catalog.retrieval import RetrievalCatalogMixin
from retro_ops.corpus import Document
from retro_ops.errors import CatalogError, CorpusError, UnknownCorpusError
from retro_ops.ids import validate_name

if TYPE_CHECKING:  # the catalog records spaces; it never needs the embedder (torch) to do so
    from retro_ops.features.embedder import EmbeddingSpace

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise CatalogError(f"alembic migrations not found at {MIGRATIONS_DIR} "
                           "(install retro-ops from its repository with `pip install -e .`)")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (alembic), in one transaction on the given engine."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # FKs off by default in SQLite
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    source_uri: str
    created_at: datetime
    latest_version_id: int | None = None
    latest_digest: str | None = None
    n_documents: int | None = None
    n_versions: int = 0


@dataclass(frozen=True)
class CorpusVersionInfo:
    id: int
    corpus: str
    digest: str
    n_documents: int
    documents_lance_version: int
    created_at: datetime


class Catalog(RetrievalCatalogMixin, ModelCatalogMixin):
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Catalog:
        engine = make_engine(url)
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- corpora -----------------------------------------------------------------------------
    def add_corpus(self, name: str, source_uri: str) -> CorpusInfo:
        """Register a corpus; re-adding the same name and source is a no-op, another source errs."""
        validate_name(name, "corpus")
        with self.session() as s:
            existing = s.scalar(select(m.Corpus).where(m.Corpus.name == name))
            if existing is not None:
                if existing.source_uri != source_uri:
                    raise CorpusError(f"corpus {name!r} already exists with source "
                                      f"{existing.source_uri!r}; choose another name")
            else:
                s.add(m.Corpus(name=name, source_uri=source_uri))
        return self.get_corpus(name)

    def _corpus_row(self, s: Session, name: str) -> m.Corpus:
        row = s.scalar(select(m.Corpus).where(m.Corpus.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(m.Corpus.name).order_by(m.Corpus.name))) or "none"
            raise UnknownCorpusError(f"unknown corpus {name!r} (known: {known})")
        return row

    def _info(self, row: m.Corpus) -> CorpusInfo:
        latest = row.versions[-1] if row.versions else None
        return CorpusInfo(
            name=row.name, source_uri=row.source_uri, created_at=row.created_at,
            latest_version_id=latest.id if latest else None,
            latest_digest=latest.digest if latest else None,
            n_documents=latest.n_documents if latest else None, n_versions=len(row.versions),
        )

    def get_corpus(self, name: str) -> CorpusInfo:
        with self.session() as s:
            return self._info(self._corpus_row(s, name))

    def list_corpora(self) -> list[CorpusInfo]:
        with self.session() as s:
            return [self._info(r) for r in s.scalars(select(m.Corpus).order_by(m.Corpus.name))]

    # -- corpus versions ---------------------------------------------------------------------
    def record_corpus_version(
        self, corpus: str, documents: Sequence[Document], digest: str, *,
        documents_lance_version: int, n_issues: int = 0, run_id: str | None = None,
    ) -> CorpusVersionInfo:
        """Record the documents one materialization found, their sources and the version's digest."""
        with self.session() as s:
            row = self._corpus_row(s, corpus)
            known = set(s.scalars(select(m.Document.doc_id).where(
                m.Document.doc_id.in_([d.doc_id for d in documents]))))
            s.add_all(m.Document(doc_id=d.doc_id, n_chars=len(d.text))
                      for d in documents if d.doc_id not in known)
            have_sources = set(s.execute(select(m.DocumentSource.doc_id, m.DocumentSource.source_uri)
                                         .where(m.DocumentSource.corpus_id == row.id)).tuples())
            s.add_all(m.DocumentSource(doc_id=d.doc_id, corpus_id=row.id, source_uri=src)
                      for d in documents for src in d.sources if (d.doc_id, src) not in have_sources)
            version = m.CorpusVersion(
                corpus_id=row.id, digest=digest, n_documents=len(documents), n_issues=n_issues,
                documents_lance_version=documents_lance_version, run_id=run_id)
            s.add(version)
            s.flush()
            s.add_all(m.CorpusVersionDocument(corpus_version_id=version.id, doc_id=d.doc_id)
                      for d in documents)
            return CorpusVersionInfo(version.id, corpus, digest, len(documents),
                                     documents_lance_version, version.created_at)

    def latest_corpus_version(self, corpus: str) -> CorpusVersionInfo:
        with self.session() as s:
            row = self._corpus_row(s, corpus)
            if not row.versions:
                raise CorpusError(f"corpus {corpus!r} has not been materialized yet "
                                  f"(run `retro-ops materialize --corpus {corpus}`)")
            v = row.versions[-1]
            return CorpusVersionInfo(v.id, corpus, v.digest, v.n_documents,
                                     v.documents_lance_version, v.created_at)

    def corpus_name_of_version(self, corpus_version_id: int) -> str:
        with self.session() as s:
            version = s.get(m.CorpusVersion, corpus_version_id)
            if version is None:
                raise CorpusError(f"no corpus version {corpus_version_id}")
            return version.corpus.name

    def corpus_doc_ids(self, corpus_version_id: int) -> list[str]:
        with self.session() as s:
            return list(s.scalars(
                select(m.CorpusVersionDocument.doc_id)
                .where(m.CorpusVersionDocument.corpus_version_id == corpus_version_id)
                .order_by(m.CorpusVersionDocument.doc_id)))

    def document_sources(self, doc_id: str) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(m.DocumentSource.source_uri)
                                  .where(m.DocumentSource.doc_id == doc_id)
                                  .order_by(m.DocumentSource.source_uri)))

    # -- features ----------------------------------------------------------------------------
    def register_embedding_space(self, space: EmbeddingSpace) -> None:
        with self.session() as s:
            if s.get(m.EmbeddingSpaceRow, space.space_id) is None:
                fields = space.as_dict()
                s.add(m.EmbeddingSpaceRow(id=fields.pop("space_id"), **fields))

    def embedding_space_dim(self, space_id: str) -> int:
        with self.session() as s:
            row = s.get(m.EmbeddingSpaceRow, space_id)
            if row is None:
                raise CatalogError(f"unknown embedding space {space_id!r}")
            return row.dim

    def record_feature_version(
        self, asset: str, corpus_version_id: int, table_name: str, lance_version: int, *,
        rows_written: int, stats: dict | None = None, run_id: str | None = None,
        embedding_space_id: str | None = None,
    ) -> int:
        with self.session() as s:
            row = m.FeatureVersion(
                asset=asset, corpus_version_id=corpus_version_id, table_name=table_name,
                lance_version=lance_version, rows_written=rows_written, stats=stats or {},
                run_id=run_id, embedding_space_id=embedding_space_id)
            s.add(row)
            s.flush()
            return row.id

    def feature_versions(self, asset: str | None = None) -> list[dict]:
        with self.session() as s:
            query = select(m.FeatureVersion).order_by(m.FeatureVersion.id)
            if asset:
                query = query.where(m.FeatureVersion.asset == asset)
            return [{"asset": r.asset, "corpus_version_id": r.corpus_version_id,
                     "table": r.table_name, "lance_version": r.lance_version,
                     "rows_written": r.rows_written, "stats": r.stats, "run_id": r.run_id}
                    for r in s.scalars(query)]

    def count(self, model: type[m.Base]) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0
