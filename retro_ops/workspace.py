"""One handle on every store of a retro-ops home: settings, catalog, feature store, embedder.

The embedder (a ~90 MB model) loads on first use only, and at most once per workspace and
embedding space. The default space is the settings' precision; a retrieval set is served in the
space its latest version was built in (`embedder_for`), so fp32 and int8 sets live side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from retro_ops.catalog import Catalog
from retro_ops.errors import RetrievalSetError
from retro_ops.features.embedder import Embedder
from retro_ops.features.spaces import METHODS, Precision, precision_of
from retro_ops.features.store import FeatureStore
from retro_ops.settings import Settings


@dataclass
class Workspace:
    settings: Settings
    catalog: Catalog
    store: FeatureStore
    _embedder: Embedder | None = field(default=None, repr=False)
    _by_space: dict[str, Embedder] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, settings: Settings | None = None) -> "Workspace":
        settings = settings or Settings.from_env()
        settings.ensure_dirs()
        return cls(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri))

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self.embedder_of(self.settings.embedder_precision)
        return self._embedder

    def embedder_of(self, precision: str) -> Embedder:
        """The settings' model at this precision (int8 exports are cached under the home)."""
        if precision not in METHODS:
            raise ValueError(f"embedder precision {precision!r}: expected one of {', '.join(METHODS)}")
        found = next((e for e in self._by_space.values() if e.precision == precision), None)
        if found is None:
            found = Embedder(self.settings.embedder_path or None, precision=cast(Precision, precision),
                             cache_dir=self.settings.home / "embedders", streams=self.settings.embedder_streams)
            self._by_space[found.space.space_id] = found
        return found

    def embedder_for(self, retrieval_set: str) -> Embedder:
        """The embedder of the space the set's latest version was built in (queries must be
        embedded as its chunks were); the default embedder when the set has no version yet."""
        info = self.catalog.get_retrieval_set(retrieval_set)
        if info.latest_version_id is None:
            return self.embedder
        space_id = self.catalog.retrieval_set_version(info.latest_version_id).embedding_space_id
        if self.embedder.space.space_id == space_id:
            return self.embedder
        candidate = self.embedder_of(precision_of(space_id))
        if candidate.space.space_id == space_id:
            return candidate
        raise RetrievalSetError(f"retrieval set {retrieval_set!r} was built in embedding space "
                                f"{space_id}, which the embedder {self.settings.embedder_path or 'MiniLM'} "
                                "gives at no precision")

    def retriever(self, retrieval_set: str, search_params: dict[str, int] | None = None):
        from retro_ops.retrieval.retriever import Retriever

        embedder = self.embedder_for(retrieval_set)  # a clear error for an unknown name
        return Retriever.open(self.catalog, self.store, embedder, self.settings.indices_dir,
                              retrieval_set, search_params=search_params)
