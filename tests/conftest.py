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
from sites import SMALL_CHAPTERS, Sites


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


@pytest.fixture(scope="session")
def sites(tmp_path_factory, embedder: Embedder, chunker: Chunker) -> Sites:
    """The session's built sites (tests/sites.py): each built once, copied for each user."""
    return Sites(tmp_path_factory.mktemp("sites"), embedder, chunker)


@pytest.fixture(scope="module")
def indexed_home(sites: Sites, tmp_path_factory):
    """A home whose corpus `small` (6 real chapters) is chunked and embedded, with a retrieval
    set `small` over it: the session's built site, copied once per test module."""
    root = sites.copy("small", tmp_path_factory.mktemp("indexed"))
    settings = Settings(home=root / "home")
    return settings, Catalog.open(settings.catalog_url, home=settings.home), FeatureStore(settings.lancedb_uri)


@pytest.fixture(scope="module")
def ws(indexed_home, embedder):
    """The indexed home as a Workspace, with the `small` set's index built and published."""
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.workspace import Workspace

    settings, catalog, store = indexed_home
    publish_retrieval_set(catalog, store, settings.indices_dir, "small", embedder.space)
    return Workspace(settings, catalog, store, embedder)


@pytest.fixture(scope="module")
def trained_ws(sites: Sites, tmp_path_factory, embedder: Embedder):
    """A Workspace on a copy of `small` with its index published and a tiny RETRO trained
    (helpers.tiny_spec(steps=2)): a module's training of that spec reuses it."""
    from retro_ops.workspace import Workspace

    root = sites.copy("small_trained", tmp_path_factory.mktemp("trained"))
    settings = Settings(home=root / "home")
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    yield Workspace(settings, catalog, FeatureStore(settings.lancedb_uri), embedder)
    catalog.close()


@pytest.fixture
def own_home(sites: Sites, tmp_path: Path):
    """(settings, catalog, store) of a copy of `small` with its set's index published, for one
    test that changes its home (exclusions, new sets): nothing it does reaches another test."""
    root = sites.copy("small_published", tmp_path / "site")
    settings = Settings(home=root / "home")
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    yield settings, catalog, FeatureStore(settings.lancedb_uri)
    catalog.close()


@pytest.fixture
def pg_database_url():
    """A throwaway Postgres database (CI must reach the server; elsewhere the test skips)."""
    from postgres import throwaway_database

    yield from throwaway_database("retro_ops_test")
