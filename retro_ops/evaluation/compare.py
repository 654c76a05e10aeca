"""Evaluate models on held-out text with and without retrieval, in bits per byte.

Settings per model: no retrieval, and each named retrieval set (the training set, or any other
set swapped in without retraining). Neighbours of evaluated chunks never come from the
evaluated document itself. Each evaluation is one MLflow run whose dataset inputs are the
evaluated text and the sets used; rows are also recorded in the catalog.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from retro_ops.catalog import CorpusVersionInfo, ModelInfo
from retro_ops.ids import set_digest
from retro_ops.catalog.mlflow_runs import DatasetRef, Tracking, code_version
from retro_ops.training.data import ChunkTable, SplitConfig, load_chunk_table, make_sequences, split_documents
from retro_ops.evaluation.bits_per_byte import evaluate, ngram_overlap
from retro_ops.training.neighbours import NeighbourConfig
from retro_ops.training.prepare import encode_neighbours, encode_table, neighbours_for
from retro_ops.training.run import load_model
from retro_ops.training.trainer import TrainingData
from retro_ops.training.vocab import Vocabulary
from retro_ops.workspace import Workspace


@dataclass(frozen=True)
class EvalText:
    """The text evaluated: some documents of one corpus version."""

    name: str  # e.g. "sotu held-out"
    corpus_version: CorpusVersionInfo
    doc_ids: list[str]
    table: ChunkTable


def heldout_text(ws: Workspace, corpus: str, split: SplitConfig, m: int, whole: bool = False) -> EvalText:
    """The held-out documents of a corpus (the same seeded split training used), or all of it."""
    version = ws.catalog.latest_corpus_version(corpus)
    doc_ids = ws.catalog.corpus_doc_ids(version.id)
    if not whole:
        doc_ids = split_documents(doc_ids, split)[1]
    return EvalText(f"{corpus} {'all' if whole else 'held-out'}", version, doc_ids,
                    load_chunk_table(ws.store, doc_ids, m))


@dataclass(frozen=True)
class EvalRow:
    model: str
    kind: str
    setting: str  # "no retrieval" or "set <name>"
    bits_per_byte: float
    loss_per_token: float
    tokens: int
    bytes: int
    neighbour_8gram_overlap: float | None = None
    unknown_token_rate: float = 0.0


@dataclass(frozen=True)
class EvaluationReport:
    text: str
    rows: list[EvalRow]
    mlflow_run_id: str

    def table(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


def _vocab(info: ModelInfo) -> Vocabulary:
    return Vocabulary.load(Path(info.checkpoint_dir))


def evaluate_models(ws: Workspace, models: list[ModelInfo], text: EvalText, sets: list[str], *,
                    k: int, dagster_run_id: str | None = None, batch_size: int = 8) -> EvaluationReport:
    """Every model with no retrieval; every retrieval-capable model with each set in `sets`."""
    m = models[0].config["chunk_size"]
    neighbour_sets = {name: neighbours_for(ws, text.table, ws.retriever(name), NeighbourConfig(k=k), m)
                      for name in sets}
    rows = []
    for info in models:
        model, vocab = load_model(info), _vocab(info)
        sequences = make_sequences(encode_table(text.table, vocab), model.config.n_chunks)
        unknown = vocab.unknown_rate(text.table.tokens)
        label = info.ref
        plain = evaluate(model, TrainingData(sequences, None), label, batch_size=batch_size)
        rows.append(EvalRow(label, info.kind, "no retrieval", plain.bits_per_byte, plain.loss_per_token,
                            plain.tokens, plain.bytes, None, unknown))
        if not model.config.retrieval:
            continue
        for name, found in neighbour_sets.items():
            result = evaluate(model, TrainingData(sequences, encode_neighbours(found.neighbours, vocab)),
                              label, batch_size=batch_size)
            overlap = ngram_overlap(text.table.tokens, text.table.n_tokens, found.neighbours.tokens,
                                    found.neighbours.mask)["shared_ngram_fraction"]
            rows.append(EvalRow(label, info.kind, f"set {name}", result.bits_per_byte,
                                result.loss_per_token, result.tokens, result.bytes, overlap, unknown))
    run_id = _log(ws, text, rows, neighbour_sets, models, dagster_run_id)
    for row, info in ((r, next(i for i in models if i.ref == r.model)) for r in rows):
        chosen = neighbour_sets.get(row.setting.removeprefix("set "))
        ws.catalog.record_evaluation(
            model_id=info.id, setting=row.setting,
            retrieval_set_version_id=chosen.set_version_id if chosen else None,
            eval_corpus_version_id=text.corpus_version.id, bits_per_byte=row.bits_per_byte,
            loss_per_token=row.loss_per_token, tokens=row.tokens, n_bytes=row.bytes, mlflow_run_id=run_id)
    return EvaluationReport(text.name, rows, run_id)


def _log(ws: Workspace, text: EvalText, rows: list[EvalRow], neighbour_sets: dict, models: list[ModelInfo],
         dagster_run_id: str | None) -> str:
    tracking = Tracking(ws.settings)
    run_id = tracking.start_run(f"evaluation-{text.name.replace(' ', '-')}", {
        "retro_ops.kind": "evaluation", "retro_ops.code_version": code_version(),
        "dagster.run_id": dagster_run_id or "", "retro_ops.models": ",".join(i.ref for i in models)})
    v = text.corpus_version
    inputs = [DatasetRef(f"eval-text:{text.name}", set_digest(text.doc_ids),
                         f"catalog:corpus_version={v.id}",
                         details={"corpus_digest": v.digest, "documents": len(text.doc_ids)})]
    inputs += [DatasetRef(f"retrieval-set:{name}", found.set_digest,
                          f"{ws.settings.lancedb_uri}/retrieval_set_chunks.lance",
                          details={"retrieval_set_version_id": found.set_version_id,
                                   "index_sha256": found.index_sha256})
               for name, found in neighbour_sets.items()]
    tracking.log_inputs(run_id, inputs, "evaluation")
    for i, row in enumerate(rows):
        slug = f"{row.kind}.{row.setting.replace(' ', '_')}"
        tracking.log_metrics(run_id, {f"bpb.{slug}": row.bits_per_byte, f"loss.{slug}": row.loss_per_token}, i)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "evaluation.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
        tracking.log_artifacts(run_id, Path(tmp), "evaluation")
    tracking.finish(run_id)
    return run_id
