"""One handle on every store of a retro-ops home: settings, catalog, feature store, embedder.

The embedder (a ~90 MB model) loads on first use only, and at most once per workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retro_ops.catalog import Catalog
from retro_ops.features.embedder import Embedder
from retro_ops.features.store import FeatureStore
from retro_ops.settings import Settings


@dataclass
class Workspace:
    settings: Settings
    catalog: Catalog
    store: FeatureStore
    _embedder: Embedder | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings | None = None) -> "Workspace":
        settings = settings or Settings.from_env()
        settings.ensure_dirs()
        return cls(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri))

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings.embedder_path or None)
        return self._embedder

    def retriever(self, retrieval_set: str, search_params: dict[str, int] | None = None):
        from retro_ops.retrieval.retriever import Retriever

        self.catalog.get_retrieval_set(retrieval_set)  # a clear error for an unknown name
        return Retriever.open(self.catalog, self.store, self.embedder, self.settings.indices_dir,
                              retrieval_set, search_params=search_params)
