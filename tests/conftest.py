"""Shared fixtures: a temporary home with real stores, the real frozen BERT, small real corpora."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retro_ops.catalog import Catalog
from retro_ops.features.chunking import Chunker
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features.embedder import Embedder
from retro_ops.features.store import FeatureStore
from retro_ops.settings import HOME_ENV, Settings

# Short real chapters of Moby-Dick: a few hundred chunks, embedded in seconds on 2 cores.
SMALL_CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt",
                  "chapter_11.txt", "chapter_12.txt"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An isolated RETRO_OPS_HOME (resources and the CLI resolve it from the environment)."""
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv(HOME_ENV, str(settings.home))
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_EMBEDDER_PATH"):
        monkeypatch.delenv(var, raising=False)
    settings.ensure_dirs()
    return settings


@pytest.fixture
def catalog(home: Settings) -> Catalog:
    cat = Catalog.open(home.catalog_url, home=home.home)
    yield cat
    cat.close()


@pytest.fixture
def store(home: Settings) -> FeatureStore:
    return FeatureStore(home.lancedb_uri)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def chunker(embedder: Embedder) -> Chunker:
    return Chunker(embedder.tokenizer)


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "small_corpus"
    folder.mkdir()
    for name in SMALL_CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory, embedder: Embedder, chunker: Chunker):
    """A home whose corpus `small` (6 real chapters) is chunked and embedded, with a retrieval
    set `small` over it: built once per test module through the library pipeline."""
    from retro_ops.features import pipeline

    root = tmp_path_factory.mktemp("indexed")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in SMALL_CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    store = FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("small", str(corpus))
    pipeline.materialize_corpus(catalog, store, chunker, embedder, "small")
    catalog.create_retrieval_set("small", ["small"])
    return settings, catalog, store


@pytest.fixture(scope="module")
def ws(indexed_home, embedder):
    """The indexed home as a Workspace, with the `small` set's index built and published."""
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.workspace import Workspace

    settings, catalog, store = indexed_home
    publish_retrieval_set(catalog, store, settings.indices_dir, "small", embedder.space)
    return Workspace(settings, catalog, store, embedder)


@pytest.fixture
def pg_database_url():
    """A throwaway Postgres database (CI must reach the server; elsewhere the test skips)."""
    from postgres import throwaway_database

    yield from throwaway_database("retro_ops_test")
