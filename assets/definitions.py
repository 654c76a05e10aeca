"""The code location: wires assets, checks and resources together, nothing else."""

import dagster as dg

from assets.features import chunk_embeddings, chunks, documents
from assets.resources import (
    CatalogResource,
    EmbedderResource,
    FeatureStoreResource,
    IndexStoreResource,
    ProgressResource,
)
from assets.retrieval import faiss_index, retrieval_set

FEATURE_ASSETS = [documents, chunks, chunk_embeddings]
RETRIEVAL_ASSETS = [retrieval_set, faiss_index]
ALL_ASSETS = FEATURE_ASSETS + RETRIEVAL_ASSETS


def default_resources() -> dict:
    return {
        "catalog": CatalogResource(),
        "feature_store": FeatureStoreResource(),
        "embedder": EmbedderResource(),
        "index_store": IndexStoreResource(),
        "progress": ProgressResource(),
    }


defs = dg.Definitions(assets=ALL_ASSETS, resources=default_resources())
