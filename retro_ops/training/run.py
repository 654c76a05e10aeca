"""Train a model from prepared data with full lineage: checkpoint, MLflow run, registry, catalog.

A checkpoint's folder is named by the hash of its config and input versions. A model whose key
the catalog already holds (and whose checkpoint files still hash as recorded) is reused, not
retrained; a folder holding a partial run is resumed from its last checkpoint. A catalogued
folder whose files no longer hash as recorded is never resumed (its weights would be registered
anew): it is moved aside to `<folder>.refused-<time>` and the model is trained from scratch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from retro_ops.catalog import ModelInfo
from retro_ops.features.chunking import tokenizer_digest
from retro_ops.ids import set_digest
from retro_ops.model import Retro, RetroConfig
from retro_ops.catalog.mlflow_runs import DatasetRef, Tracking, code_version
from retro_ops.errors import RetroOpsError
from retro_ops.training.checkpoint import VOCAB_FILE, CheckpointFiles, read_checkpoint
from retro_ops.training.data import make_sequences
from retro_ops.training.neighbours import with_distractors, with_self_neighbours, withheld_neighbours
from retro_ops.training.prepare import PreparedData, encode_neighbours, encode_table, model_key
from retro_ops.training.reads import neighbour_chunk_ids, record_model_reads
from retro_ops.training.trainer import TrainingData, TrainResult, retrofit_model, seeded_model, train
from retro_ops.training.verified import load_verified, record_fields, verify_files
from retro_ops.workspace import Workspace

log = logging.getLogger(__name__)

Kind = Literal["baseline", "retro", "retrofit"]
REGISTERED_NAMES = {"baseline": "retro-ops-baseline", "retro": "retro-ops-retro",
                    "retrofit": "retro-ops-retrofit"}


@dataclass(frozen=True)
class TrainedModel:
    info: ModelInfo
    result: TrainResult | None  # None when an identical model was reused
    reused: bool


def model_config(kind: Kind, data: PreparedData) -> RetroConfig:
    base = data.spec.model.to_dict()
    return RetroConfig.from_dict({**base, "vocab_size": data.vocab.size,
                                  "n_neighbours": data.spec.neighbours.k,
                                  "retrieval": kind != "baseline"})


def training_data(data: PreparedData, with_neighbours: bool, heldout: bool = False) -> TrainingData:
    """Sequences (and neighbours) of the train or held-out chunks, in the model's vocabulary.
    Training neighbours include the spec's shares of self-neighbours, of distractors (another
    chunk's neighbours) and of chunks with none; held-out ones are as retrieved."""
    table = data.heldout_table if heldout else data.train_table
    sequences = make_sequences(encode_table(table, data.vocab), data.spec.model.n_chunks)
    if not with_neighbours:
        return TrainingData(sequences, None)
    if heldout:
        neighbours = data.heldout_neighbours.neighbours
    else:
        train = data.spec.train
        neighbours = with_self_neighbours(data.train_neighbours.neighbours, table, train.self_neighbours,
                                          train.seed, train.self_neighbour_shift, train.self_neighbour_noise)
        neighbours = withheld_neighbours(with_distractors(neighbours, train.distractor_share, train.seed),
                                         train.no_neighbour_share, train.seed)
    return TrainingData(sequences, encode_neighbours(neighbours, data.vocab))


def lineage_inputs(ws: Workspace, data: PreparedData, kind: Kind) -> list[DatasetRef]:
    """The dataset inputs MLflow records for a training run."""
    v, uri = data.corpus_version, ws.settings.lancedb_uri
    inputs = [
        DatasetRef(f"corpus:{data.spec.corpus}", v.digest,
                   f"{uri}/documents.lance#version={v.documents_lance_version}",
                   details={"corpus_version_id": v.id, "documents": v.n_documents}),
        DatasetRef(f"training-documents:{data.spec.corpus}", set_digest(data.train_doc_ids),
                   f"catalog:corpus_version={v.id}",
                   details={"train_documents": len(data.train_doc_ids),
                            "heldout_documents": len(data.heldout_doc_ids)}),
        DatasetRef("tokenizer", tokenizer_digest(ws.embedder.space.model_path),
                   ws.embedder.space.model_path,
                   details={"vocabulary_digest": data.vocab.digest, "vocabulary_size": data.vocab.size}),
    ]
    if kind != "baseline":
        r, space = data.retriever.version, data.retriever.embedder.space  # the set's own space
        inputs += [
            DatasetRef(f"retrieval-set:{r.retrieval_set}", r.digest,
                       f"{uri}/retrieval_set_chunks.lance#version={r.members_lance_version}",
                       details={"retrieval_set_version_id": r.id, "chunks": r.n_chunks,
                                "chunks_lancedb_version": r.chunks_lance_version,
                                "embeddings_table": r.embeddings_table,
                                "embeddings_lancedb_version": r.embeddings_lance_version}),
            DatasetRef(f"faiss-index:{r.retrieval_set}", data.retriever.manifest.sha256,
                       str(ws.settings.indices_dir / r.retrieval_set),
                       details={"factory": data.retriever.manifest.factory,
                                "ntotal": data.retriever.manifest.ntotal}),
            DatasetRef(f"embedding-space:{r.embedding_space_id}", space.weights_digest,
                       space.model_path, details=space.as_dict()),
            DatasetRef("training-neighbours", data.train_neighbours.key,
                       str(ws.settings.neighbours_dir / f"{data.train_neighbours.key}.npz"),
                       details={"k": data.spec.neighbours.k}),
        ]
    return inputs


def _log_model(tracking: Tracking, run_id: str, files: CheckpointFiles, ws: Workspace, kind: Kind,
               retrieval_set: str) -> str:
    """Log weights, config and vocabulary (not optimizer state) as the `checkpoint` artifact and,
    for retrieval models, as an MLflow pyfunc (`model`); returns what the registry points at.
    The bytes logged are those the catalog's manifest is computed from."""
    from retro_ops.training.pyfunc_package import log_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.data.items():
            (Path(tmp) / name).write_bytes(data)
        source = tracking.log_artifacts(run_id, Path(tmp), "checkpoint")
        if kind != "baseline":  # RETRO models are also pyfuncs with the set as a param
            source = log_pyfunc(tracking, run_id, Path(tmp), ws.settings.home, retrieval_set)
        return source


def _new_model(kind: Kind, config: RetroConfig, data: PreparedData, parent: ModelInfo | None) -> Retro:
    if kind == "retrofit":  # the parent's checkpoint, checked against the catalog first
        return retrofit_model(load_verified(parent).model, config, data.spec.train.seed)
    return seeded_model(config, data.spec.train.seed)


def find_model(ws: Workspace, data: PreparedData, kind: Kind) -> ModelInfo | None:
    """The model of this kind trained from exactly these data and spec, if there is one."""
    parent = find_model(ws, data, "baseline") if kind == "retrofit" else None
    if kind == "retrofit" and parent is None:
        return None
    key = model_key(kind, data, parent.weights_sha256 if parent else None,
                    tokenizer_digest(ws.embedder.space.model_path))
    return ws.catalog.model_by_key(key)


def train_model(ws: Workspace, data: PreparedData, kind: Kind, *, parent: ModelInfo | None = None,
                dagster_run_id: str | None = None, progress: Callable[[int, int], None] | None = None,
                crash_at_step: int | None = None) -> TrainedModel:
    if kind == "retrofit" and parent is None:
        raise ValueError("RETROfitting needs the trained baseline it starts from (parent)")
    tokenizer_id = tokenizer_digest(ws.embedder.space.model_path)
    key = model_key(kind, data, parent.weights_sha256 if parent else None, tokenizer_id)
    existing = ws.catalog.model_by_key(key)
    if existing and _intact(existing):
        return TrainedModel(existing, None, reused=True)
    config = model_config(kind, data)
    folder = ws.settings.checkpoints_dir / f"{kind}-{key[:16]}"
    if existing and folder.exists():
        _set_aside(folder)
    model = _new_model(kind, config, data, parent)
    tracking = Tracking(ws.settings)
    tags = {"retro_ops.kind": kind, "retro_ops.model_key": key, "retro_ops.code_version": code_version(),
            "dagster.run_id": dagster_run_id or "", "mlflow.source.name": "retro-ops"}
    run_id = tracking.start_run(f"{kind}-{data.spec.corpus}", tags)
    try:
        tracking.log_params(run_id, {**_flat("model", config.to_dict()),
                                     **_flat("train", data.spec.train.as_dict()),
                                     "neighbours.k": data.spec.neighbours.k,
                                     "split.heldout_fraction": data.spec.split.heldout_fraction,
                                     "split.seed": data.spec.split.seed,
                                     "split.validation_share": data.spec.split.validation_share,
                                     "split.group_by": data.spec.split.group_by,
                                     "retrieval_set": data.spec.retrieval_set if kind != "baseline" else "",
                                     "parent_model": parent.ref if parent else ""})
        tracking.log_inputs(run_id, lineage_inputs(ws, data, kind), "training")
        trainable = model.retrieval_parameters() if kind == "retrofit" else None
        inputs = training_data(data, kind != "baseline")
        result = train(model, inputs, folder, data.spec.train,
                       trainable=trainable, progress=progress, crash_at_step=crash_at_step,
                       files={VOCAB_FILE: data.vocab.to_json()})
        tracking.log_curve(run_id, "train_loss", result.losses)
        tracking.log_metrics(run_id, {"tokens_per_second": result.tokens_per_second,
                                      "train_seconds": result.seconds,
                                      "trainable_parameters": result.trainable_parameters,
                                      "total_parameters": result.total_parameters})
        files = read_checkpoint(folder)
        source = _log_model(tracking, run_id, files, ws, kind, data.spec.retrieval_set)
        info = ws.catalog.record_model(
            kind=kind, key=key, checkpoint_dir=str(folder), **record_fields(files),
            config=config.to_dict(), corpus_version_id=data.corpus_version.id,
            retrieval_set_version_id=data.retriever.version.id if kind != "baseline" else None,
            index_build_id=_index_build_id(ws, data) if kind != "baseline" else None,
            parent_model_id=parent.id if parent else None,
            embedding_space_id=data.retriever.embedder.space.space_id if kind != "baseline" else None,
            tokenizer_id=tokenizer_id, code_version=tags["retro_ops.code_version"],
            dagster_run_id=dagster_run_id, training_doc_ids=data.train_doc_ids,
            neighbours_key=data.train_neighbours.key if kind != "baseline" else None,
            vocabulary_digest=data.vocab.digest, split_seed=data.spec.split.seed,
            split_heldout_fraction=data.spec.split.heldout_fraction,
            split_min_heldout=data.spec.split.min_heldout,
            split_validation_share=data.spec.split.validation_share,
            split_group_by=data.spec.split.group_by)
        info = _record_reads(ws, info, data, inputs)
        name = REGISTERED_NAMES[kind]
        version = tracking.register(name, source, run_id, "candidate",
                                    tags={"retro_ops.model_id": str(info.id), "retro_ops.model_key": key,
                                          "retro_ops.checkpoint_sha256": files.digest})
        info = ws.catalog.set_model_registry(info.id, run_id=run_id, name=name, version=version)
        tracking.finish(run_id)
    except BaseException:
        tracking.finish(run_id, "FAILED")
        raise
    return TrainedModel(info, result, reused=False)


def _index_build_id(ws: Workspace, data: PreparedData) -> int | None:
    """The catalog's record of the index build the training neighbours were retrieved from."""
    manifest = data.retriever.manifest
    build = ws.catalog.trusted_index_build(manifest.retrieval_set, manifest.retrieval_set_version_id,
                                           manifest.sha256, manifest.digest())
    return build.id if build else None


def _record_reads(ws: Workspace, info: ModelInfo, data: PreparedData, inputs: TrainingData) -> ModelInfo:
    """Write the chunk ids the model read (text and neighbours) and point its catalog row at them."""
    chunk_ids = data.train_table.chunk_ids
    neighbours = (neighbour_chunk_ids(inputs.neighbours.ids, inputs.neighbours.chunk_ids,
                                      inputs.neighbours.copied, inputs.neighbours.mask)
                  if inputs.neighbours is not None else np.empty(0, dtype=np.int64))
    reads = record_model_reads(ws.store, info.id, chunk_ids, neighbours)
    return ws.catalog.set_model_reads(info.id, table=reads.table, lance_version=reads.lance_version,
                                      digest=reads.digest, n_training_chunks=reads.n_training_chunks,
                                      n_neighbour_chunks=reads.n_neighbour_chunks)


def _flat(prefix: str, values: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in values.items()}


def _intact(info: ModelInfo) -> bool:
    """The catalogued checkpoint is there and every file hashes as recorded."""
    try:
        verify_files(info, read_checkpoint(Path(info.checkpoint_dir)))
    except (RetroOpsError, OSError):
        return False
    return True


def _set_aside(folder: Path) -> None:
    """Keep a catalogued checkpoint that no longer verifies for inspection, out of training's way."""
    aside = folder.with_name(f"{folder.name}.refused-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(folder, aside)
    log.warning("%s no longer matches the catalog's record: moved to %s; training from scratch",
                folder, aside)


def load_model(info: ModelInfo) -> Retro:
    """The catalogued model, verified (`training.verified.load_verified`, which also gives its
    vocabulary from the same read)."""
    return load_verified(info).model
