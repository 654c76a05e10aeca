"""The catalog: corpora, their versions and documents, embedding spaces, feature versions.

`Catalog.open(url)` migrates the database to the newest schema on first use (SQLite under the
home folder by default, Postgres when `RETRO_OPS_CATALOG_URL` says so) and hands out plain
dataclasses, never ORM objects bound to a closed session.

Paths are stored so that a copied home still works: files under the home (checkpoints, index
builds) relative to the home, a corpus source under the home's parent folder (the checkout that
holds `.retro_ops`) relative to the home, and each document's source relative to its corpus root.
A catalog opened with its `home` resolves them back to absolute paths when read; values recorded
absolute by older versions still read as they were.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from retro_ops.catalog import tables as m
from retro_ops.catalog.exclusions import ExclusionCatalogMixin
from retro_ops.catalog.model_records import ModelCatalogMixin
from retro_ops.catalog.purges import PurgeCatalogMixin
from retro_ops.catalog.retrieval import RetrievalCatalogMixin
from retro_ops.catalog.upserts import insert_missing, insert_or_skip
from retro_ops.corpus import Document
from retro_ops.corpus.readers import SUPPORTED_SUFFIXES
from retro_ops.errors import CatalogError, CorpusError, UnknownCorpusError
from retro_ops.ids import validate_name
from retro_ops.settings import resolve_stored, stored_path

if TYPE_CHECKING:  # the catalog records spaces; it never needs the embedder (torch) to do so
    from retro_ops.features.spaces import EmbeddingSpace

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_GLOB_CHARS = re.compile(r"[*?\[]")
_MIGRATION_LOCK = 0x7265_7472_6F6D  # Postgres advisory lock key held while the catalog migrates
_VERSION_ATTEMPTS = 20  # next-number tries when other processes record versions of one corpus at once


def corpus_root(source_uri: str) -> str:
    """The folder a corpus's document sources are recorded relative to: the corpus folder, a single
    file's folder, or a glob's fixed leading folders; symlinks resolved, as the readers resolve files."""
    path = Path(source_uri).expanduser()
    if _GLOB_CHARS.search(source_uri):
        first = next(i for i, part in enumerate(path.parts) if _GLOB_CHARS.search(part))
        path = Path(*path.parts[:first]) if first else Path(".")
    elif path.is_file() or (not path.exists() and path.suffix.lower() in SUPPORTED_SUFFIXES):
        path = path.parent
    return os.path.realpath(path)


def source_in_corpus(source: str, root: str) -> str | None:
    """`source` relative to the corpus root (`a/b.txt`, `c.jsonl#L3`), or None when it lies outside."""
    if os.path.isabs(source):
        prefix = root.rstrip(os.sep) + os.sep
        return source[len(prefix):] if source.startswith(prefix) else None
    return source


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
        if connection.dialect.name == "postgresql":  # processes opening a new catalog at once: one migrates
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
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


class Catalog(RetrievalCatalogMixin, ExclusionCatalogMixin, PurgeCatalogMixin, ModelCatalogMixin):
    def __init__(self, engine: Engine, home: Path | None = None):
        """`home`: the folder recorded paths are relative to (None: store and read them as given)."""
        self.engine = engine
        self.home = Path(home).expanduser().resolve() if home is not None else None
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True, home: Path | None = None) -> Catalog:
        engine = make_engine(url)
        if migrate_schema:
            migrate(engine)
        return cls(engine, home)

    # -- paths -------------------------------------------------------------------------------
    def stored_path(self, path: str | Path, *, within: Path | None = None) -> str:
        """How `path` is recorded: relative to the home when under `within` (default the home)."""
        return str(path) if self.home is None else stored_path(path, self.home, within=within)

    def resolved_path(self, stored: str) -> str:
        """A recorded path as an absolute path under this catalog's home."""
        return stored if self.home is None else resolve_stored(stored, self.home)

    def _stored_source(self, source_uri: str) -> str:
        # the checkout holding the home moves with it; a shared data disk elsewhere does not
        return self.stored_path(source_uri, within=self.home.parent if self.home else None)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- corpora -----------------------------------------------------------------------------
    def add_corpus(self, name: str, source_uri: str) -> CorpusInfo:
        """Register a corpus; re-adding the same name and source is a no-op, another source errs.
        Two processes adding the same corpus at once store one row (insert ... on conflict)."""
        validate_name(name, "corpus")
        stored = self._stored_source(source_uri)
        with self.session() as s:
            s.execute(insert_or_skip(s, m.Corpus).values(name=name, source_uri=stored))
            existing = self._corpus_row(s, name)
            if self.resolved_path(existing.source_uri) != self.resolved_path(stored):
                raise CorpusError(f"corpus {name!r} already exists with source "
                                  f"{self.resolved_path(existing.source_uri)!r}; choose another name")
        return self.get_corpus(name)

    def move_corpus(self, name: str, source_uri: str) -> CorpusInfo:
        """Point a corpus at the place its files now live (a home moved to a machine where they lie
        elsewhere). Its versions and document sources, relative to the corpus root, stay valid."""
        with self.session() as s:
            self._corpus_row(s, name).source_uri = self._stored_source(source_uri)
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
            name=row.name, source_uri=self.resolved_path(row.source_uri), created_at=row.created_at,
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
        """Record the documents one materialization found, their sources and the version's digest.

        The same documents from the same files as the latest version (same digest, same sources)
        are that version: nothing new is stored (a renamed file makes a new version). Race-free
        across processes and machines: documents and sources are inserted with `on conflict do
        nothing`, and a new version takes the corpus's next number (`seq`, unique per corpus), so
        of two processes recording the same version at once one stores it and the other returns
        it; a different version recorded meanwhile is followed by this one."""
        for _ in range(_VERSION_ATTEMPTS):
            with self.session() as s:
                row = self._corpus_row(s, corpus)
                latest = self._latest_version(s, row.id)
                root = corpus_root(self.resolved_path(row.source_uri))
                new_sources = sorted({(d.doc_id, source_in_corpus(src, root) or src)
                                      for d in documents for src in d.sources})
                if latest is not None and latest.digest == digest and new_sources == sorted(tuple(r) for r in s.execute(
                        select(m.CorpusVersionSource.doc_id, m.CorpusVersionSource.source_uri)
                        .where(m.CorpusVersionSource.corpus_version_id == latest.id))):
                    return _version_info(corpus, latest)  # the same documents from the same files
                self._store_documents(s, row.id, root, documents, new_sources)
                seq = latest.seq + 1 if latest is not None else 1
                version_id = s.scalar(insert_or_skip(s, m.CorpusVersion).values(
                    corpus_id=row.id, seq=seq, digest=digest, n_documents=len(documents), n_issues=n_issues,
                    documents_lance_version=documents_lance_version, run_id=run_id,
                ).returning(m.CorpusVersion.id))
                if version_id is None:  # another process took this number first: see what it stored
                    continue
                insert_missing(s, m.CorpusVersionDocument, [
                    {"corpus_version_id": version_id, "doc_id": d.doc_id,
                     "n_bytes": len(d.text.encode("utf-8", "surrogatepass"))}
                    for d in sorted(documents, key=lambda d: d.doc_id)])
                s.add_all(m.CorpusVersionSource(corpus_version_id=version_id, doc_id=doc_id, source_uri=src)
                          for doc_id, src in new_sources)
                return _version_info(corpus, s.get(m.CorpusVersion, version_id))
        raise CatalogError(f"corpus {corpus!r}: no version number free after {_VERSION_ATTEMPTS} attempts "
                           "(other processes keep recording versions of it)")

    def _latest_version(self, s: Session, corpus_id: int) -> m.CorpusVersion | None:
        return s.scalar(select(m.CorpusVersion).where(m.CorpusVersion.corpus_id == corpus_id)
                        .order_by(m.CorpusVersion.seq.desc()).limit(1))

    def _store_documents(self, s: Session, corpus_id: int, root: str, documents: Sequence[Document],
                         sources: list[tuple[str, str]]) -> None:
        """The documents' rows and this corpus's sources of them, those not stored yet (a source
        recorded absolute by an older retro-ops counts as stored)."""
        insert_missing(s, m.Document, [{"doc_id": d.doc_id, "n_chars": len(d.text)}
                                       for d in sorted({d.doc_id: d for d in documents}.values(),
                                                       key=lambda d: d.doc_id)])
        have = {(doc_id, source_in_corpus(src, root) or src) for doc_id, src in s.execute(
            select(m.DocumentSource.doc_id, m.DocumentSource.source_uri)
            .where(m.DocumentSource.corpus_id == corpus_id))}
        insert_missing(s, m.DocumentSource, [{"doc_id": doc_id, "corpus_id": corpus_id, "source_uri": src}
                                             for doc_id, src in sources if (doc_id, src) not in have])

    def latest_corpus_version(self, corpus: str) -> CorpusVersionInfo:
        with self.session() as s:
            row = self._corpus_row(s, corpus)
            if not row.versions:
                raise CorpusError(f"corpus {corpus!r} has not been materialized yet "
                                  f"(run `retro-ops materialize --corpus {corpus}`)")
            return _version_info(corpus, row.versions[-1])

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
        """Where a document was read from, relative to its corpus root (`notes/a.txt`, `b.jsonl#L3`):
        safe to show to any client, since no absolute host path ever leaves here. A source outside
        its corpus root (recorded by an older retro-ops, or a corpus since moved) shows its file
        name only."""
        with self.session() as s:
            rows = s.execute(select(m.DocumentSource.source_uri, m.Corpus.source_uri)
                             .join(m.Corpus, m.Corpus.id == m.DocumentSource.corpus_id)
                             .where(m.DocumentSource.doc_id == doc_id)).all()
        return sorted(set(_public_sources(rows, self.resolved_path)))

    def documents_sources(self, doc_ids: Iterable[str]) -> dict[str, list[str]]:
        """`document_sources` of many documents, queried in batches of ids (documents with none
        are absent)."""
        wanted, found = sorted(set(doc_ids)), {}
        with self.session() as s:
            for start in range(0, len(wanted), 500):
                rows = s.execute(select(m.DocumentSource.doc_id, m.DocumentSource.source_uri, m.Corpus.source_uri)
                                 .join(m.Corpus, m.Corpus.id == m.DocumentSource.corpus_id)
                                 .where(m.DocumentSource.doc_id.in_(wanted[start:start + 500])))
                for doc_id, source, corpus_source in rows:
                    found.setdefault(doc_id, []).append((source, corpus_source))
        return {d: sorted(set(_public_sources(r, self.resolved_path))) for d, r in found.items()}

    # -- features ----------------------------------------------------------------------------
    def register_embedding_space(self, space: EmbeddingSpace) -> None:
        """Record an embedder's identity once, however many processes register it at once."""
        fields = space.as_dict()
        with self.session() as s:
            s.execute(insert_or_skip(s, m.EmbeddingSpaceRow).values(
                id=fields.pop("space_id"), **fields))

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


def _version_info(corpus: str, v: m.CorpusVersion) -> CorpusVersionInfo:
    return CorpusVersionInfo(v.id, corpus, v.digest, v.n_documents, v.documents_lance_version, v.created_at)


def _public_sources(rows: Iterable[tuple[str, str]], resolve) -> Iterator[str]:
    """(document source, corpus source) rows as paths relative to the corpus root."""
    roots: dict[str, str] = {}
    for source, corpus_source in rows:
        if not os.path.isabs(source):
            yield source
            continue
        if corpus_source not in roots:
            roots[corpus_source] = corpus_root(resolve(corpus_source))
        yield source_in_corpus(source, roots[corpus_source]) or os.path.basename(source)
