"""Typed resources around the library's stores. Empty fields resolve from the environment at
run time (RETRO_OPS_HOME, RETRO_OPS_CATALOG_URL, ...), so one definition serves every home."""


from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from retro_ops.default_corpora import DEMO_CORPUS, DEMO_RETRIEVAL_SET
from retro_ops.settings import Settings
from retro_ops.training.config import NeighbourConfig, SplitConfig, TrainConfig

if TYPE_CHECKING:  # the stores load where a step opens them, not where the code location loads
    from retro_ops.catalog import Catalog
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder
    from retro_ops.features.store import FeatureStore
    from retro_ops.training.prepare import TrainingSpec
    from retro_ops.workspace import Workspace


class CatalogResource(dg.ConfigurableResource):
    """The SQLAlchemy catalog; "" = RETRO_OPS_CATALOG_URL or SQLite under the home folder."""

    url: str = ""

    def open(self) -> "Catalog":
        from retro_ops.catalog import Catalog

        settings = Settings.from_env()
        return Catalog.open(self.url or settings.catalog_url, home=settings.home)


class FeatureStoreResource(dg.ConfigurableResource):
    """The LanceDB feature store; "" = RETRO_OPS_LANCEDB_URI or `<home>/lancedb`."""

    uri: str = ""

    def open(self) -> "FeatureStore":
        from retro_ops.features.store import FeatureStore

        return FeatureStore(self.uri or Settings.from_env().lancedb_uri)


_EMBEDDER: dict[tuple, "Embedder"] = {}  # the embedder this process loaded last (EmbedderResource.load)


def _weights_stamp(folder: Path | None) -> tuple:
    """(name, size, mtime) of a model folder's files; the packaged model's never change."""
    if folder is None or not folder.is_dir():
        return ()
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file())


class EmbedderResource(dg.ConfigurableResource):
    """The frozen embedder: any local Hugging Face folder; "" = the packaged all-MiniLM-L6-v2."""

    model_path: str = ""
    batch_size: int = 64
    chunk_tokens: int = 64

    def _path(self) -> str | None:
        return self.model_path or Settings.from_env().embedder_path or None

    def load(self) -> "Embedder":
        """At the settings' precision (`RETRO_OPS_EMBEDDER_PRECISION`): each is its own space.
        Loaded once per process and kept: a warm process (a Celery worker's pool process, an
        in-process run of several steps) loads the weights for its first step only. Weights
        changed on disk (another size or time) load again."""
        settings = Settings.from_env()
        path = self._path()
        folder = Path(path) if path else None
        key = (str(folder), _weights_stamp(folder), self.batch_size, settings.embedder_precision,
               str(settings.home / "embedders"), settings.embedder_streams)
        if key not in _EMBEDDER:  # one kept at a time: a process that switches homes or models reloads
            from retro_ops.features.embedder import Embedder

            _EMBEDDER.clear()
            _EMBEDDER[key] = Embedder(path, batch_size=self.batch_size, precision=settings.embedder_precision,
                                      cache_dir=settings.home / "embedders", streams=settings.embedder_streams)
        return _EMBEDDER[key]

    def chunker(self) -> "Chunker":
        from retro_ops.features.chunking import Chunker, ChunkerConfig
        from retro_ops.features.embedder import default_model_dir

        return Chunker.from_model_dir(self._path() or default_model_dir(),
                                      ChunkerConfig(chunk_tokens=self.chunk_tokens))


class ProgressResource(dg.ConfigurableResource):
    """Where long work reports progress. Here: the run's log, every `log_every_percent`.
    The CLI substitutes a subclass that draws a progress bar in the terminal."""

    log_every_percent: int = 10

    def tracker(self, context: dg.AssetExecutionContext, label: str) -> Callable[[int, int], None]:
        state = {"step": -1}

        def report(done: int, total: int) -> None:
            step = 100 if total == 0 else 100 * done // total // self.log_every_percent
            if step != state["step"]:
                state["step"] = step
                context.log.info(f"{label}: {done}/{total}")

        return report


class IndexStoreResource(dg.ConfigurableResource):
    """Where published FAISS indices live; "" = `<home>/indices` (one folder per retrieval set)."""

    root: str = ""

    def path(self) -> Path:
        return Path(self.root) if self.root else Settings.from_env().indices_dir


class WorkspaceResource(dg.ConfigurableResource):
    """All stores of a home at once (catalog, feature store, embedder, indices, MLflow), for the
    model assets that read across them."""

    catalog: CatalogResource
    feature_store: FeatureStoreResource
    embedder: EmbedderResource

    def open(self) -> "Workspace":
        from retro_ops.workspace import Workspace

        base = Settings.from_env()
        return Workspace.open(replace(
            base, catalog_url=self.catalog.url or base.catalog_url,
            lancedb_uri=self.feature_store.uri or base.lancedb_uri,
            embedder_path=self.embedder.model_path or base.embedder_path))


_TRAIN, _SPLIT, _NEIGHBOURS = TrainConfig(), SplitConfig(), NeighbourConfig()


class TrainingResource(dg.ConfigurableResource):
    """A training spec: what the model assets train on and how. Each spec is saved under its
    name and is one partition of the model assets (`assets/specs.py`), so every asset of a run
    agrees. A flat view of `TrainingSpec`: every default is read from `TrainConfig`,
    `SplitConfig` and `NeighbourConfig`, the one place each is set and explained (a test keeps
    them equal); the seed is both the training and the split seed."""

    corpus: str = DEMO_CORPUS
    retrieval_set: str = DEMO_RETRIEVAL_SET
    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    k: int = _NEIGHBOURS.k
    seed: int = _TRAIN.seed
    heldout_fraction: float = _SPLIT.heldout_fraction
    validation_share: float = _SPLIT.validation_share
    group_by: str = _SPLIT.group_by
    self_neighbours: float = _TRAIN.self_neighbours
    self_neighbour_shift: int = _TRAIN.self_neighbour_shift
    self_neighbour_noise: float = _TRAIN.self_neighbour_noise
    no_neighbour_share: float = _TRAIN.no_neighbour_share
    distractor_share: float = _TRAIN.distractor_share

    def spec(self) -> "TrainingSpec":
        from retro_ops.training.prepare import TrainingSpec

        return TrainingSpec(
            corpus=self.corpus, retrieval_set=self.retrieval_set,
            train=TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                              self_neighbours=self.self_neighbours,
                              self_neighbour_shift=self.self_neighbour_shift,
                              self_neighbour_noise=self.self_neighbour_noise,
                              no_neighbour_share=self.no_neighbour_share,
                              distractor_share=self.distractor_share),
            neighbours=NeighbourConfig(k=self.k),
            split=SplitConfig(heldout_fraction=self.heldout_fraction, seed=self.seed,
                              validation_share=self.validation_share, group_by=self.group_by))
