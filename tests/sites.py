"""Built sites: each built once per test session, then copied for whoever needs one.

A site is a folder holding a home (`home/`) and its corpora beside it (`corpus/`, ...). Homes
are relocatable (tests/test_relocatable_home.py): the catalog records the corpus and every file
under the home relative to the home, so a copy of the whole site works where it lies, as if
built there. Module fixtures take a copy each (`sites.copy(name, folder)`); a test that changes
its home takes its own copy. The built sites themselves are never handed out, so no test can
change what another one starts from.

One limit, MLflow's own (see tests/test_relocatable_home.py): a copied MLflow store still names
the original's artifact folder for the experiment and the registered models, so a run logged in
a copy goes to a second experiment of the copy, and a registered model's pyfunc loads from the
original site. Hence one site with a trained model (`small_trained`), for modules that serve or
generate from the catalog's checkpoint; a module that loads the pyfunc trains in its copy.

Under pytest-xdist the workers share one folder of built sites: whoever needs a site first
builds it while holding that site's lock (fcntl), the others wait for it and copy it."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

from retro_ops.catalog import Catalog
from retro_ops.catalog.mlflow_runs import Tracking
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.settings import HOME_ENV, Settings
from retro_ops.workspace import Workspace

MOBY = CORPORA_DIR / "moby_dick"
# Short real chapters of Moby-Dick: a few hundred chunks, embedded in seconds on 2 cores.
SMALL_CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt",
                  "chapter_11.txt", "chapter_12.txt"]
#: variables that would point a home's stores elsewhere (a test's home unsets them)
HOME_OVERRIDES = ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_EMBEDDER_PATH",
                  "RETRO_OPS_MLFLOW_URI", "RETRO_OPS_DAGSTER_STORAGE_URL")
#: two corpora of a few dozen chunks each, for the Dagster automation tests
TWO_CORPORA = {"small": ["chapter_23.txt", "chapter_38.txt"], "other": ["chapter_97.txt"]}


def copy_chapters(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(MOBY / name, folder / name)
    return folder


def open_home(home: Path, embedder) -> Workspace:
    """The home at `home` with its catalog, LanceDB and the session's embedder."""
    settings = Settings(home=home)
    settings.ensure_dirs()
    return Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                     FeatureStore(settings.lancedb_uri), embedder)


def _small(root: Path, sites: Sites) -> None:
    """Corpus `small` (the six chapters) chunked and embedded; set `small` over it, not pinned."""
    corpus = copy_chapters(root / "corpus", SMALL_CHAPTERS)
    ws = open_home(root / "home", sites.embedder)
    ws.catalog.add_corpus("small", str(corpus))
    pipeline.materialize_corpus(ws.catalog, ws.store, sites.chunker, sites.embedder, "small")
    ws.catalog.create_retrieval_set("small", ["small"])
    ws.catalog.close()
    Tracking(ws.settings)  # creates MLflow's store (its migrations cost seconds in every home)


def _small_published(root: Path, sites: Sites) -> None:
    """`small`, with its set pinned and its index built and published."""
    from retro_ops.retrieval.index.route import publish_retrieval_set

    sites.copy("small", root)
    ws = open_home(root / "home", sites.embedder)
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "small", sites.embedder.space)
    ws.catalog.close()


def _small_trained(root: Path, sites: Sites) -> None:
    """`small_published`, with a tiny RETRO trained on it (helpers.tiny_spec(steps=2)): a module
    that trains the same spec gets this model back (train_model reuses a model of the same key).
    Not for tests that load the MLflow pyfunc or registry: in a copy those still lead to this
    site's artifact folder (MLflow records it absolute)."""
    from helpers import tiny_spec

    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    sites.copy("small_published", root)
    ws = open_home(root / "home", sites.embedder)
    train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro")
    ws.catalog.close()


def _two_corpora(root: Path, sites: Sites) -> None:
    """Corpora `small` and `other` (TWO_CORPORA), each with its own set, materialized through
    Dagster (corpus chain, then set and index) on the instance under the home."""
    import pytest

    from assets.launch import materialize_corpus, materialize_retrieval_set
    from assets.instance import dagster_instance

    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    for name, files in TWO_CORPORA.items():
        catalog.add_corpus(name, str(copy_chapters(root / name, files)))
        catalog.create_retrieval_set(name, [name])
    catalog.close()
    with pytest.MonkeyPatch.context() as env:  # the runs' resources find the home in the environment
        env.setenv(HOME_ENV, str(settings.home))
        for var in HOME_OVERRIDES:
            env.delenv(var, raising=False)
        instance = dagster_instance(settings)
        for name in TWO_CORPORA:
            assert materialize_corpus(instance, name).success
            assert materialize_retrieval_set(instance, name).success
        instance.dispose()


BUILDERS: dict[str, Callable[[Path, Sites], None]] = {
    "small": _small,
    "small_published": _small_published,
    "small_trained": _small_trained,
    "two_corpora": _two_corpora,
}


class Sites:
    """The session's built sites under `root`, each built on first use; `root` may be shared by
    several processes (pytest-xdist's workers): a site is built by one of them, under its lock."""

    def __init__(self, root: Path, embedder, chunker):
        self.root, self.embedder, self.chunker = root, embedder, chunker
        self.root.mkdir(parents=True, exist_ok=True)
        self._built: set[str] = set()

    def _build(self, name: str) -> None:
        if name not in BUILDERS:
            raise KeyError(f"no site named {name!r}: choose one of {', '.join(sorted(BUILDERS))}")
        folder, done = self.root / name, self.root / f"{name}.built"
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():  # nobody built it yet (or a build failed half-way: start again)
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                BUILDERS[name](folder, self)
                done.touch()
        self._built.add(name)

    def copy(self, name: str, dest: Path) -> Path:
        """A copy of site `name` at `dest` (created, or empty); returns `dest`."""
        if name not in self._built:
            self._build(name)
        shutil.copytree(self.root / name, dest, symlinks=True, dirs_exist_ok=True)
        return dest
