"""Model assets: training_neighbours -> baseline / retro / retrofit checkpoints -> evaluation.

One `TrainingResource` holds what to train on and how (set it once in the launchpad's resource
config, or the CLI does), so every asset of a run reads the same spec. Checkpoints and
neighbours are keyed by the hash of that spec and of the exact input versions: re-materializing
with nothing changed reuses them.
"""

import dagster as dg

from assets.features import chunk_embeddings
from assets.resources import ProgressResource, TrainingResource, WorkspaceResource
from assets.retrieval import faiss_index
from retro_ops.training.evaluation import evaluate_models, heldout_text
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


def _bpb_markdown(rows) -> str:
    lines = ["| model | setting | bits/byte | loss/token | 8-gram overlap |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.setting} | {r.bits_per_byte:.4f} | {r.loss_per_token:.4f} | "
              f"{'' if r.neighbour_8gram_overlap is None else f'{r.neighbour_8gram_overlap:.4f}'} |"
              for r in rows]
    return "\n".join(lines)


def _checkpoint_result(trained: TrainedModel) -> dg.MaterializeResult:
    info, result = trained.info, trained.result
    metadata = {"model": info.ref, "kind": info.kind, "reused": trained.reused,
                "checkpoint": info.checkpoint_dir, "weights_sha256": info.weights_sha256,
                "mlflow_run_id": info.mlflow_run_id or "", "model_key": info.key}
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
    return _checkpoint_result(trained)


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


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"},
          deps=[baseline_checkpoint, retro_checkpoint, retrofit_checkpoint], code_version="1")
def evaluation(context: dg.AssetExecutionContext, workspace: WorkspaceResource,
               training: TrainingResource) -> dg.MaterializeResult:
    """Held-out bits per byte: baseline; RETRO (and RETROfit, when trained) without retrieval
    and with the training retrieval set. Models are the ones trained from exactly this spec."""
    ws = workspace.open()
    spec = training.spec()
    data = prepare_training(ws, spec)
    found = {kind: find_model(ws, data, kind) for kind in ("baseline", "retro", "retrofit")}
    if found["baseline"] is None or found["retro"] is None:
        raise dg.Failure("train baseline_checkpoint and retro_checkpoint first")
    models = [info for info in found.values() if info is not None]
    text = heldout_text(ws, spec.corpus, spec.split, spec.model.chunk_size)
    report = evaluate_models(ws, models, text, [spec.retrieval_set], k=spec.neighbours.k,
                             dagster_run_id=context.run.run_id)
    best = {r.setting + r.kind: r.bits_per_byte for r in report.rows}
    return dg.MaterializeResult(metadata={
        "text": report.text, "documents": len(text.doc_ids), "mlflow_run_id": report.mlflow_run_id,
        "bpb_table": dg.MetadataValue.md(_bpb_markdown(report.rows)),
        "bpb_baseline": round(best["no retrievalbaseline"], 4),
        "bpb_retro_with_retrieval": round(best[f"set {spec.retrieval_set}retro"], 4),
        "rows": dg.MetadataValue.json(report.table()),
    })


class SwapEvaluationConfig(dg.Config):
    """on: the corpus whose held-out documents are evaluated; sets: the retrieval sets to swap
    in (no retraining); model: a model reference, "" = the RETRO trained from the training spec."""

    on: str = "moby_dick"
    sets: list[str] = ["sotu", "moby_dick"]
    model: str = ""


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1",
          deps=[retro_checkpoint, dg.AssetDep(faiss_index, partition_mapping=dg.AllPartitionMapping())])
def swap_evaluation(context: dg.AssetExecutionContext, config: SwapEvaluationConfig,
                    workspace: WorkspaceResource, training: TrainingResource) -> dg.MaterializeResult:
    """Zero-shot transfer: one model on another domain's held-out text with no retrieval, the
    training set, and each swapped-in set; one MLflow run whose inputs are the sets used."""
    ws = workspace.open()
    spec = training.spec()
    info = (ws.catalog.resolve_model(config.model) if config.model
            else find_model(ws, prepare_training(ws, spec), "retro"))
    if info is None:
        raise dg.Failure("no RETRO model trained from this spec yet: materialize retro_checkpoint")
    text = heldout_text(ws, config.on, spec.split, spec.model.chunk_size)
    report = evaluate_models(ws, [info], text, list(config.sets), k=info.config["n_neighbours"],
                             dagster_run_id=context.run.run_id)
    return dg.MaterializeResult(metadata={
        "text": report.text, "documents": len(text.doc_ids), "model": info.ref,
        "mlflow_run_id": report.mlflow_run_id, "bpb_table": dg.MetadataValue.md(_bpb_markdown(report.rows)),
        "rows": dg.MetadataValue.json(report.table()),
        **{f"bpb_{r.setting.replace(' ', '_')}": round(r.bits_per_byte, 4) for r in report.rows},
    })
