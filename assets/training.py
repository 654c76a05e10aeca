"""Model assets: training_neighbours -> baseline / retro / retrofit checkpoints.

Each partition is one training spec (`assets/specs.py`: what to train on and how, recorded when
the CLI first launches it), so every asset of a run reads the same spec and two specs' models
stand side by side. Checkpoints and neighbours are keyed by the hash of that spec and of the
exact input versions: re-materializing with nothing changed reuses them. No automation here:
training is deliberate; the UI shows these stale when their inputs change.
"""

from typing import TYPE_CHECKING

import dagster as dg

from assets.features import chunk_embeddings
from assets.figures import loss_curve_markdown
from assets.groups import MODELS, owners
from assets.partitions import training_spec_partitions
from assets.resources import ProgressResource, WorkspaceResource
from assets.retrieval import faiss_index
from assets.specs import spec_of

if TYPE_CHECKING:
    from retro_ops.training.run import TrainedModel

# Each body imports the library stages it runs: the location loads light (assets/definitions.py).

MODEL_ASSET = dict(partitions_def=training_spec_partitions, group_name=MODELS, owners=owners(MODELS),
                   code_version="1")


@dg.asset(**MODEL_ASSET, kinds={"faiss", "numpy"},
          deps=[dg.AssetDep(faiss_index, partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep(chunk_embeddings, partition_mapping=dg.AllPartitionMapping())])
def training_neighbours(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
    """Top-k neighbours of every training and held-out chunk, same-document hits excluded;
    computed once per (chunks, retrieval-set version, index, k) and reused by every epoch."""
    from retro_ops.training.prepare import prepare_training

    training = spec_of(context)
    data = prepare_training(workspace.open(), training.spec())
    train, held = data.train_neighbours, data.heldout_neighbours
    return dg.MaterializeResult(
        data_version=dg.DataVersion(train.key[:16]),
        metadata={
            "dagster/row_count": len(data.train_table), "training_spec": dg.MetadataValue.json(training.model_dump()),
            "key": train.key, "heldout_key": held.key, "computed_now": train.computed_now,
            "train_chunks": len(data.train_table), "heldout_chunks": len(data.heldout_table),
            "train_documents": len(data.train_doc_ids), "heldout_documents": len(data.heldout_doc_ids),
            "k": training.k, "filled_share": round(float(train.neighbours.mask.mean()), 4),
            "retrieval_set": train.retrieval_set, "retrieval_set_version_id": train.set_version_id,
            "retrieval_set_digest": train.set_digest, "index_sha256": train.index_sha256,
            "corpus_digest": data.corpus_version.digest, "vocabulary_size": data.vocab.size,
        },
    )


def _lineage_metadata(ws, info) -> dict:
    """The model's MLflow run as a link and its lineage summary as a table (also logged to the run)."""
    from retro_ops.lineage.publish import publish_lineage, summary_rows

    lineage, url = publish_lineage(ws, info)
    table = dg.MetadataValue.table(
        [dg.TableRecord({"field": k, "value": v}) for k, v in summary_rows(lineage.summary)],
        schema=dg.TableSchema(columns=[dg.TableColumn("field"), dg.TableColumn("value")]))
    return {"lineage": table, **({"mlflow_run": dg.MetadataValue.url(url)} if url else {})}


def _checkpoint_result(trained: "TrainedModel", ws) -> dg.MaterializeResult:
    from retro_ops.lineage.publish import mlflow_model_version_url

    info, result = trained.info, trained.result
    metadata = {"model": info.ref, "kind": info.kind, "reused": trained.reused,
                "checkpoint": info.checkpoint_dir, "weights_sha256": info.weights_sha256,
                "checkpoint_sha256": info.checkpoint_sha256 or "",
                "mlflow_run_id": info.mlflow_run_id or "", "model_key": info.key}
    if info.mlflow_model_name and info.mlflow_model_version:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(
            mlflow_model_version_url(info.mlflow_model_name, info.mlflow_model_version))
    metadata.update(_lineage_metadata(ws, info))
    if result is not None:
        metadata.update({
            "final_loss": round(result.losses[-1][1], 4), "tokens_per_second": round(result.tokens_per_second, 1),
            "train_seconds": round(result.seconds, 1), "resumed_from_step": result.resumed_from,
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
            "loss_curve": loss_curve_markdown([s for s, _ in result.losses], [v for _, v in result.losses],
                                              f"{info.kind} training loss"),
            "losses": dg.MetadataValue.json({"step": [s for s, _ in result.losses],
                                             "loss": [round(v, 4) for _, v in result.losses]}),
        })
    return dg.MaterializeResult(data_version=dg.DataVersion(info.weights_sha256[:16]), metadata=metadata)


def _train(context, workspace, progress, kind) -> dg.MaterializeResult:
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import find_model, train_model

    ws = workspace.open()
    data = prepare_training(ws, spec_of(context).spec())
    parent = None
    if kind == "retrofit":
        parent = find_model(ws, data, "baseline")
        if parent is None:
            raise dg.Failure("no baseline trained from these inputs yet: materialize baseline_checkpoint")
    trained = train_model(ws, data, kind, parent=parent, dagster_run_id=context.run.run_id,
                          progress=progress.tracker(context, f"training {kind}"))
    return _checkpoint_result(trained, ws)


@dg.asset(**MODEL_ASSET, kinds={"pytorch", "mlflow"}, deps=[training_neighbours])
def baseline_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                        progress: ProgressResource) -> dg.MaterializeResult:
    """The same decoder without retrieval, trained on the same tokens, steps and seed."""
    return _train(context, workspace, progress, "baseline")


@dg.asset(**MODEL_ASSET, kinds={"pytorch", "mlflow"}, deps=[training_neighbours])
def retro_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                     progress: ProgressResource) -> dg.MaterializeResult:
    """RETRO trained on precomputed neighbours; registered in MLflow with its data lineage."""
    return _train(context, workspace, progress, "retro")


@dg.asset(**MODEL_ASSET, kinds={"pytorch", "mlflow"}, deps=[baseline_checkpoint, training_neighbours])
def retrofit_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                        progress: ProgressResource) -> dg.MaterializeResult:
    """The trained baseline, frozen, with only an encoder and CCA layers trained (RETROfitting)."""
    return _train(context, workspace, progress, "retrofit")
