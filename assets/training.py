"""Model assets: training_neighbours -> baseline / retro / retrofit checkpoints.

One `TrainingResource` holds what to train on and how (set it once in the launchpad's resource
config, or the CLI does), so every asset of a run reads the same spec. Checkpoints and
neighbours are keyed by the hash of that spec and of the exact input versions: re-materializing
with nothing changed reuses them.
"""

import dagster as dg

from assets.features import chunk_embeddings
from assets.resources import ProgressResource, TrainingResource, WorkspaceResource
from assets.retrieval import faiss_index
from retro_ops.lineage.publish import publish_lineage, summary_rows
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import TrainedModel, find_model, train_model

GROUP = "model"


@dg.asset(group_name=GROUP, kinds={"faiss", "numpy"}, code_version="1",
          deps=[dg.AssetDep(faiss_index, partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep(chunk_embeddings, partition_mapping=dg.AllPartitionMapping())])
def training_neighbours(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                        training: TrainingResource) -> dg.MaterializeResult:
    """Top-k neighbours of every training and held-out chunk, same-document hits excluded;
    computed once per (chunks, retrieval-set version, index, k) and reused by every epoch."""
    data = prepare_training(workspace.open(), training.spec())
    train, held = data.train_neighbours, data.heldout_neighbours
    return dg.MaterializeResult(
        data_version=dg.DataVersion(train.key[:16]),
        metadata={
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
    lineage, url = publish_lineage(ws, info)
    table = dg.MetadataValue.table(
        [dg.TableRecord({"field": k, "value": v}) for k, v in summary_rows(lineage.summary)],
        schema=dg.TableSchema(columns=[dg.TableColumn("field"), dg.TableColumn("value")]))
    return {"lineage": table, **({"mlflow_run": dg.MetadataValue.url(url)} if url else {})}


def _checkpoint_result(trained: TrainedModel, ws) -> dg.MaterializeResult:
    info, result = trained.info, trained.result
    metadata = {"model": info.ref, "kind": info.kind, "reused": trained.reused,
                "checkpoint": info.checkpoint_dir, "weights_sha256": info.weights_sha256,
                "mlflow_run_id": info.mlflow_run_id or "", "model_key": info.key}
    metadata.update(_lineage_metadata(ws, info))
    if result is not None:
        metadata.update({
            "final_loss": round(result.losses[-1][1], 4), "tokens_per_second": round(result.tokens_per_second, 1),
            "train_seconds": round(result.seconds, 1), "resumed_from_step": result.resumed_from,
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
            "loss_curve": dg.MetadataValue.json({"step": [s for s, _ in result.losses],
                                                 "loss": [round(v, 4) for _, v in result.losses]}),
        })
    return dg.MaterializeResult(data_version=dg.DataVersion(info.weights_sha256[:16]), metadata=metadata)


def _train(context, workspace, training, progress, kind) -> dg.MaterializeResult:
    ws = workspace.open()
    data = prepare_training(ws, training.spec())
    parent = None
    if kind == "retrofit":
        parent = find_model(ws, data, "baseline")
        if parent is None:
            raise dg.Failure("no baseline trained from these inputs yet: materialize baseline_checkpoint")
    trained = train_model(ws, data, kind, parent=parent, dagster_run_id=context.run.run_id,
                          progress=progress.tracker(context, f"training {kind}"))
    return _checkpoint_result(trained, ws)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=[training_neighbours], code_version="1")
def baseline_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                        training: TrainingResource, progress: ProgressResource) -> dg.MaterializeResult:
    """The same decoder without retrieval, trained on the same tokens, steps and seed."""
    return _train(context, workspace, training, progress, "baseline")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=[training_neighbours], code_version="1")
def retro_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                     training: TrainingResource, progress: ProgressResource) -> dg.MaterializeResult:
    """RETRO trained on precomputed neighbours; registered in MLflow with its data lineage."""
    return _train(context, workspace, training, progress, "retro")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=[baseline_checkpoint, training_neighbours],
          code_version="1")
def retrofit_checkpoint(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
                        training: TrainingResource, progress: ProgressResource) -> dg.MaterializeResult:
    """The trained baseline, frozen, with only an encoder and CCA layers trained (RETROfitting)."""
    return _train(context, workspace, training, progress, "retrofit")
