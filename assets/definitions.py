"""The code location: wires assets, checks and resources together, nothing else."""

import dagster as dg

from assets.features import chunk_embeddings, chunks, documents
from assets.resources import (
    CatalogResource,
    EmbedderResource,
    FeatureStoreResource,
    IndexStoreResource,
    ProgressResource,
    TrainingResource,
    WorkspaceResource,
)
from assets.retrieval import faiss_index, retrieval_set
from assets.sharded import SHARDED_ASSETS
from assets.evaluation import evaluation, swap_evaluation
from assets.training import baseline_checkpoint, retro_checkpoint, retrofit_checkpoint, training_neighbours

FEATURE_ASSETS = [documents, chunks, chunk_embeddings]
RETRIEVAL_ASSETS = [retrieval_set, faiss_index]
MODEL_ASSETS = [training_neighbours, baseline_checkpoint, retro_checkpoint, retrofit_checkpoint,
                evaluation, swap_evaluation]
ALL_ASSETS = FEATURE_ASSETS + RETRIEVAL_ASSETS + MODEL_ASSETS


def default_resources(training: TrainingResource | None = None) -> dict:
    catalog, feature_store, embedder = CatalogResource(), FeatureStoreResource(), EmbedderResource()
    return {
        "catalog": catalog,
        "feature_store": feature_store,
        "embedder": embedder,
        "workspace": WorkspaceResource(catalog=catalog, feature_store=feature_store, embedder=embedder),
        "training": training or TrainingResource(),
        "index_store": IndexStoreResource(),
        "progress": ProgressResource(),
    }


defs = dg.Definitions(assets=ALL_ASSETS + SHARDED_ASSETS, resources=default_resources())
