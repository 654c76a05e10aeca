"""The code location: wires assets, checks, resources, sensors and automation together.

The scale-out assets (`assets/sharded.py`, group `scale_out`) are the alternative, sharded route
to the same chunks, embeddings and index; they are in the location unless RETRO_OPS_SCALE_OUT=0
where it loads (`retro-ops ui` sets that unless `--scale-out`, so that after `make demo` the UI
shows the route the demo took, all of it materialized).

Loading this module declares; it runs nothing. Every process that serves the location loads it
(the UI's code servers, the daemon's, `dagster definitions validate`, each launched run before
its first step), so it loads without torch, transformers, LanceDB, MLflow or datasketch: each
asset body imports the library stages it runs, and what the declarations need lives in light
modules (`retro_ops/features/schemas.py`, `retro_ops/training/config.py`).
`tests/test_layering.py` fails when one of those packages comes back."""

import os

import dagster as dg

from assets.automation import automation_sensor, switch
from assets.evaluation import evaluation, swap_evaluation
from assets.features import chunk_embeddings, chunks, documents
from assets.governance import chunk_scores
from assets.resources import (
    CatalogResource,
    EmbedderResource,
    FeatureStoreResource,
    IndexStoreResource,
    ProgressResource,
    WorkspaceResource,
)
from assets.retrieval import faiss_index, retrieval_set
from assets.dedup import DEDUP_ASSETS, DEDUP_CHECKS
from assets.generations import generation_log, observe_generation_log
from assets.sharded import SHARDED_ASSETS
from assets.sources import corpus_files, exclusions, source_observer
from assets.training import baseline_checkpoint, retro_checkpoint, retrofit_checkpoint, training_neighbours
from retro_ops.errors import SettingsError

SOURCE_ASSETS = [corpus_files, exclusions]
FEATURE_ASSETS = [documents, chunks, chunk_embeddings, chunk_scores]  # one partition per corpus
RETRIEVAL_ASSETS = [retrieval_set, faiss_index]  # one partition per retrieval set
MODEL_ASSETS = [training_neighbours, baseline_checkpoint, retro_checkpoint, retrofit_checkpoint,
                evaluation, swap_evaluation]  # one partition per training spec
SERVING_ASSETS = [generation_log]  # observed: servers write it, Dagster never materializes it
ALL_ASSETS = SOURCE_ASSETS + FEATURE_ASSETS + DEDUP_ASSETS + RETRIEVAL_ASSETS + MODEL_ASSETS + SERVING_ASSETS


def default_resources() -> dict:
    catalog, feature_store, embedder = CatalogResource(), FeatureStoreResource(), EmbedderResource()
    return {
        "catalog": catalog,
        "feature_store": feature_store,
        "embedder": embedder,
        "workspace": WorkspaceResource(catalog=catalog, feature_store=feature_store, embedder=embedder),
        "index_store": IndexStoreResource(),
        "progress": ProgressResource(),
    }


#: 0: the code location leaves out the scale-out assets (`retro-ops ui` sets it unless --scale-out)
SCALE_OUT_ENV = "RETRO_OPS_SCALE_OUT"


def scale_out_assets() -> list:
    """The sharded route's assets, unless RETRO_OPS_SCALE_OUT says no (a switch, not a secret)."""
    return SHARDED_ASSETS if switch(SCALE_OUT_ENV, default=True) else []


#: where the steps of a run launched on this location execute (the UI, the automation daemon,
#: `dagster asset materialize`): `in_process` (default) or `multiprocess`
EXECUTOR_ENV = "RETRO_OPS_EXECUTOR"
EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def local_executor() -> dg.ExecutorDefinition:
    """In-process by default: a run's steps share one process, so Python, torch and Dagster are
    imported and the embedder loaded once per run, not once per step (12.9 s a step under the
    multiprocess executor, 0.4-0.5 s in-process: docs/results/2026-12-07-incremental.md). Our
    partitions' graphs are chains, so a process per step bought no parallelism; shards and
    partitions still run at once as runs of their own. RETRO_OPS_EXECUTOR=multiprocess brings
    back a process per step (isolation of a step that might crash its process)."""
    name = os.environ.get(EXECUTOR_ENV, "").strip() or "in_process"
    if name not in EXECUTORS:
        raise SettingsError(f"{EXECUTOR_ENV}={name!r}: choose {' or '.join(EXECUTORS)}")
    return EXECUTORS[name]


def shared_definitions() -> dg.Definitions:
    """The location without an executor: the cluster locations (deploy/) add theirs to it. A
    function, not a module attribute: Dagster loads a module's only Definitions object."""
    return dg.Definitions(assets=ALL_ASSETS + scale_out_assets(), asset_checks=DEDUP_CHECKS,
                          jobs=[observe_generation_log], sensors=[source_observer, automation_sensor()],
                          resources=default_resources())


defs = dg.Definitions.merge(shared_definitions(), dg.Definitions(executor=local_executor()))
