"""The code location: wires assets, checks and resources together, nothing else."""

import dagster as dg

from assets.features import chunk_embeddings, chunks, documents
from assets.resources import (
    CatalogResource, EmbedderResource, FeatureStoreResource, ProgressResource,
)

ALL_ASSETS = [documents, chunks, chunk_embeddings]


def default_resources() -> dict:
    return {
        "catalog": CatalogResource(),
        "feature_store": FeatureStoreResource(),
        "embedder": EmbedderResource(),
        "progress": ProgressResource(),
    }


defs = dg.Definitions(assets=ALL_ASSETS, resources=default_resources())
