"""Evaluate models on held-out text with and without retrieval, in bits per byte, with paired
intervals for the differences that matter and buckets by overlap alpha.

Leak-free by construction: a model is only ever scored on documents it was not trained on (its
catalog record says which it was; `TrainingDocumentError` otherwise), and held-out documents
follow the split the model recorded. Neighbours of evaluated chunks never come from the
evaluated document itself; with `leakage_filter` they also never come from any evaluated
document or a near-duplicate of one. Each evaluation is one MLflow run whose dataset inputs are
the evaluated text and the sets used; rows are also recorded in the catalog.

Controls tell reading from extra capacity (issue #24): the first set's neighbours shuffled
across chunks (the same tokens, read where they do not belong), and an oracle whose last
neighbour is the exact text that follows (what copying could give at most). Intervals resample
documents, not chunks.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retro_ops.catalog import CorpusVersionInfo, ModelInfo
from retro_ops.catalog.mlflow_runs import DatasetRef, Tracking, code_version
from retro_ops.errors import RetroOpsError
from retro_ops.evaluation.bits_per_byte import EvalResult, evaluate
from retro_ops.evaluation.intervals import paired_bootstrap
from retro_ops.evaluation.plots import alpha_curve_png
from retro_ops.evaluation.overlap import FIRST, READ_BUCKETS, READS, Buckets, overlap_alpha, reads_neighbours
from retro_ops.evaluation.token_bytes import token_bytes
from retro_ops.features.chunking import Chunker
from retro_ops.governance.dedup import DedupConfig
from retro_ops.ids import set_digest
from retro_ops.training.config import SplitConfig
from retro_ops.training.data import ChunkTable, Part, load_chunk_table, make_sequences
from retro_ops.training.neighbours import NeighbourConfig, Neighbours, shuffled_neighbours, with_self_neighbours
from retro_ops.training.prepare import (
    NeighbourSet, corpus_split, encode_neighbours, encode_table, forbidden_neighbour_docs, neighbours_for,
)
from retro_ops.training.trainer import TrainingData
from retro_ops.training.verified import load_verified
from retro_ops.training.vocab import UNK
from retro_ops.workspace import Workspace


class TrainingDocumentError(RetroOpsError, ValueError):
    """An evaluation would score a document the model was trained on."""


@dataclass(frozen=True)
class EvalText:
    """The text evaluated: some documents of one corpus version."""

    name: str  # e.g. "sotu held-out"
    corpus_version: CorpusVersionInfo
    doc_ids: list[str]
    table: ChunkTable


def heldout_text(ws: Workspace, corpus: str, split: SplitConfig, m: int, whole: bool = False,
                 part: Part = "heldout") -> EvalText:
    """A part of a corpus's held-out documents under `split` (validation for tuning, test for
    reporting, or both), or all of it."""
    version = ws.catalog.latest_corpus_version(corpus)
    if whole:
        doc_ids, label = ws.catalog.corpus_doc_ids(version.id), "all"
    else:
        doc_ids = corpus_split(ws, version, split).part(part)
        label = "held-out" if part == "heldout" or not split.validation_share else part
    return EvalText(f"{corpus} {label}", version, doc_ids, load_chunk_table(ws.store, doc_ids, m))


def model_split(info: ModelInfo) -> SplitConfig:
    """The split the model was trained with (recorded since 0009, its parts since 0011; the
    legacy split where a field was not recorded)."""
    if info.split_seed is None:
        return SplitConfig.legacy()
    return SplitConfig.legacy(heldout_fraction=info.split_heldout_fraction, min_heldout=info.split_min_heldout,
                              seed=info.split_seed, validation_share=info.split_validation_share or 0.0,
                              group_by=info.split_group_by or "document")


def model_heldout_text(ws: Workspace, info: ModelInfo, corpus: str | None = None,
                       whole: bool = False, part: Part = "test") -> EvalText:
    """A part of the held-out text of `corpus` (default: the model's training corpus) under the
    model's split: test (reported) by default, or validation (tuning)."""
    name = corpus or ws.catalog.corpus_name_of_version(info.corpus_version_id)
    return heldout_text(ws, name, model_split(info), info.config["chunk_size"], whole, part)


def refuse_training_documents(ws: Workspace, models: list[ModelInfo], text: EvalText) -> None:
    """Evaluated and training documents are disjoint for every model, or nothing is scored."""
    evaluated = set(text.doc_ids)
    for info in models:
        seen = sorted(evaluated & set(ws.catalog.model_training_doc_ids(info.id)))
        if seen:
            raise TrainingDocumentError(
                f"{info.ref} was trained on {len(seen)} of the {len(evaluated)} documents of "
                f"{text.name!r} (e.g. {seen[0]}): evaluate it on its own held-out documents")


@dataclass(frozen=True)
class EvalRow:
    model: str
    kind: str
    setting: str  # "no retrieval" or "set <name>"
    bits_per_byte: float
    loss_per_token: float
    tokens: int
    bytes: int
    bits_per_byte_known: float  # over targets that are not [UNK]
    unknown_share: float  # of scored targets
    alpha_set: str | None  # whose neighbours define the alpha buckets of this row
    bpb_first: float | None = None  # sequence-first chunks: they read no neighbours
    bpb_reads: float | None = None  # chunks that read neighbours
    bpb_reads_low: float | None = None  # ... with alpha <= 12.5%
    bpb_reads_mid: float | None = None  # ... 12.5% < alpha <= 50%
    bpb_reads_high: float | None = None  # ... alpha > 50%
    leaky_share: float | None = None  # chunks with alpha > 50%
    deciles: list | None = None  # bpb of reading chunks by alpha decile (None: empty decile)


@dataclass(frozen=True)
class Comparison:
    """bpb(a) - bpb(b) on the same chunks of one alpha bucket, with a paired 95% interval."""

    a: str  # "model | setting"
    b: str
    what: str  # "retrieval vs none", "vs baseline", "set vs set"
    bucket: str
    difference: float
    low: float
    high: float
    chunks: int
    unit: str = "documents"  # what the interval resampled
    units: int = 0


@dataclass(frozen=True)
class EvaluationReport:
    text: str
    rows: list[EvalRow]
    mlflow_run_id: str
    comparisons: list[Comparison] = field(default_factory=list)
    leakage_filter: bool = False
    scores: dict = field(default_factory=dict, repr=False, compare=False)  # (model, setting) -> EvalResult
    buckets: dict = field(default_factory=dict, repr=False, compare=False)  # set name -> Buckets

    def table(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def comparison_table(self) -> list[dict]:
        return [asdict(c) for c in self.comparisons]

    @property
    def leaky_share(self) -> float:
        """The largest share of chunks with alpha > 50% under any set evaluated."""
        return max((r.leaky_share for r in self.rows if r.leaky_share is not None), default=0.0)


#: buckets whose paired differences are reported (deciles stay in the rows)
COMPARED = ("all", FIRST, READS, READ_BUCKETS[-1][0])
CONTROL_SHUFFLED, CONTROL_ORACLE = "control: {} shuffled", "control: oracle"
CONTROL_UNRELATED = "control: unrelated set {}"


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value


def _row(info: ModelInfo, setting: str, result: EvalResult, alpha_set: str | None,
         buckets: Buckets | None) -> EvalRow:
    bpb = result.chunks.bits_per_byte
    if buckets is None:
        return EvalRow(info.ref, info.kind, setting, result.bits_per_byte, result.loss_per_token,
                       result.tokens, result.bytes, result.bits_per_byte_known, result.unknown_share, None)
    by = {label: _nan_to_none(bpb(rows)) for label, rows in buckets.rows.items()}
    return EvalRow(info.ref, info.kind, setting, result.bits_per_byte, result.loss_per_token,
                   result.tokens, result.bytes, result.bits_per_byte_known, result.unknown_share,
                   alpha_set, by[FIRST], by[READS], *(by[label] for label, _, _ in READ_BUCKETS),
                   buckets.leaky_share, [_nan_to_none(bpb(rows)) for rows in buckets.decile_rows])


def _comparisons(scored: dict[tuple[str, str], EvalResult], rows: list[EvalRow],
                 buckets: dict[str, Buckets], documents: np.ndarray, seed: int) -> list[Comparison]:
    """RETRO vs baseline, retrieval (and each control) vs none, and each set vs the first, in
    the COMPARED buckets, with intervals that resample documents."""
    by_key = {(r.model, r.setting): r for r in rows}
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    first_set = next((r.setting for r in rows if r.setting.startswith("set ")), None)
    pairs = []
    for r in rows:
        if r.setting != "no retrieval":
            pairs.append((r, by_key[(r.model, "no retrieval")], "retrieval vs none"))
            if first_set and r.setting.startswith("set ") and r.setting != first_set:
                pairs.append((r, by_key[(r.model, first_set)], "set vs set"))
        if baseline is not None and r.kind != "baseline" and not r.setting.startswith("control"):
            pairs.append((r, baseline, "vs baseline"))
    out = []
    for a, b, what in pairs:
        sa, sb = scored[(a.model, a.setting)].chunks, scored[(b.model, b.setting)].chunks
        groups = buckets.get(a.alpha_set or "")
        chosen = ([(label, groups.rows[label]) for label in COMPARED] if groups
                  else [("all", np.flatnonzero(sa.tokens > 0))])
        for label, rows_in in chosen:
            rows_in = rows_in[sa.bytes[rows_in] > 0]
            if len(rows_in) == 0:
                continue
            iv = paired_bootstrap(sa.nll[rows_in], sb.nll[rows_in], sa.bytes[rows_in],
                                  clusters=documents[rows_in], seed=seed)
            out.append(Comparison(f"{a.model} | {a.setting}", f"{b.model} | {b.setting}", what, label,
                                  iv.difference, iv.low, iv.high, iv.chunks, iv.unit, iv.units))
    return out


def control_neighbours(found: Neighbours, table: ChunkTable, seed: int) -> dict[str, Neighbours]:
    """The control settings of a set's neighbours: shuffled across chunks, and the oracle."""
    return {"shuffled": shuffled_neighbours(found, seed),
            "oracle": with_self_neighbours(found, table, 1.0, seed)}


def evaluate_models(ws: Workspace, models: list[ModelInfo], text: EvalText, sets: list[str], *,
                    k: int, dagster_run_id: str | None = None, batch_size: int = 8,
                    leakage_filter: bool = False, dedup: DedupConfig = DedupConfig(),
                    seed: int = 0, controls: bool = True,
                    unrelated_sets: tuple[str, ...] = ()) -> EvaluationReport:
    """Every model with no retrieval; every retrieval-capable model with each set in `sets`
    and, with `controls`, the first set shuffled, the oracle and each of `unrelated_sets` (sets
    of another domain). No-retrieval and control rows are bucketed by the first set's alpha, so
    they pair with its rows."""
    refuse_training_documents(ws, models, text)
    loaded = {info.id: load_verified(info) for info in models}  # a tampered checkpoint: no work done
    m = models[0].config["chunk_size"]
    neighbour_sets: dict[str, NeighbourSet] = {}
    for name in sets:
        retriever = ws.retriever(name)
        forbidden = (forbidden_neighbour_docs(ws, retriever, text.doc_ids, dedup) if leakage_filter
                     else frozenset())
        neighbour_sets[name] = neighbours_for(ws, text.table, retriever, NeighbourConfig(k=k), m, forbidden)
    unrelated = {name: neighbours_for(ws, text.table, ws.retriever(name), NeighbourConfig(k=k), m).neighbours
                 for name in (unrelated_sets if controls else ())}
    sizes = token_bytes(ws.store, Chunker(ws.embedder.tokenizer), text.table)
    rows, scored = [], {}
    buckets: dict[str, Buckets] = {}
    for info in models:
        model, vocab = loaded[info.id].model, loaded[info.id].vocab
        sequences = make_sequences(encode_table(text.table, vocab), model.config.n_chunks)
        unk_id = int(vocab.encode(np.array([UNK]))[0])
        for name, found in neighbour_sets.items():
            if name not in buckets:
                alpha = overlap_alpha(text.table, sequences, found.neighbours)
                reads = reads_neighbours(sequences, found.neighbours, len(text.table))
                buckets[name] = Buckets.of(alpha, sizes.sum(axis=1) > 0, reads)
        first = next(iter(neighbour_sets), None)
        plain = evaluate(model, TrainingData(sequences, None), info.ref, sizes, unk_id, batch_size=batch_size)
        scored[(info.ref, "no retrieval")] = plain
        rows.append(_row(info, "no retrieval", plain, first, buckets.get(first)))
        if not model.config.retrieval:
            continue
        settings = {f"set {name}": (name, found.neighbours) for name, found in neighbour_sets.items()}
        if controls and first is not None:
            extra = control_neighbours(neighbour_sets[first].neighbours, text.table, seed)
            settings[CONTROL_SHUFFLED.format(first)] = (first, extra["shuffled"])
            settings[CONTROL_ORACLE] = (first, extra["oracle"])
            settings.update({CONTROL_UNRELATED.format(name): (first, found) for name, found in unrelated.items()})
        for setting, (name, neighbours) in settings.items():
            result = evaluate(model, TrainingData(sequences, encode_neighbours(neighbours, vocab)),
                              info.ref, sizes, unk_id, batch_size=batch_size)
            scored[(info.ref, setting)] = result
            rows.append(_row(info, setting, result, name, buckets[name]))
    comparisons = _comparisons(scored, rows, buckets, text.table.doc_ids, seed)
    run_id = _log(ws, text, rows, comparisons, neighbour_sets, models, dagster_run_id, leakage_filter)
    for row, info in ((r, next(i for i in models if i.ref == r.model)) for r in rows):
        if row.setting.startswith("control"):
            continue  # controls are diagnostics, not evaluations of the model with a set
        chosen = neighbour_sets.get(row.setting.removeprefix("set "))
        ws.catalog.record_evaluation(
            model_id=info.id, setting=row.setting,
            retrieval_set_version_id=chosen.set_version_id if chosen else None,
            eval_corpus_version_id=text.corpus_version.id, bits_per_byte=row.bits_per_byte,
            loss_per_token=row.loss_per_token, tokens=row.tokens, n_bytes=row.bytes, mlflow_run_id=run_id)
    return EvaluationReport(text.name, rows, run_id, comparisons, leakage_filter, scored, buckets)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _log(ws: Workspace, text: EvalText, rows: list[EvalRow], comparisons: list[Comparison],
         neighbour_sets: dict, models: list[ModelInfo], dagster_run_id: str | None,
         leakage_filter: bool) -> str:
    tracking = Tracking(ws.settings)
    run_id = tracking.start_run(f"evaluation-{text.name.replace(' ', '-')}", {
        "retro_ops.kind": "evaluation", "retro_ops.code_version": code_version(),
        "dagster.run_id": dagster_run_id or "", "retro_ops.models": ",".join(i.ref for i in models),
        "retro_ops.leakage_filter": str(leakage_filter).lower()})
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
        slug = _slug(f"{row.kind}.{row.setting.replace(' ', '_')}")
        metrics = {f"bpb.{slug}": row.bits_per_byte, f"loss.{slug}": row.loss_per_token,
                   f"bpb_known.{slug}": row.bits_per_byte_known, f"unk_share.{slug}": row.unknown_share}
        for name, value in (("bpb_first", row.bpb_first), ("bpb_reads", row.bpb_reads),
                            ("bpb_reads_alpha_le_12_5", row.bpb_reads_low),
                            ("bpb_reads_alpha_12_5_50", row.bpb_reads_mid),
                            ("bpb_reads_alpha_gt_50", row.bpb_reads_high), ("leaky_share", row.leaky_share),
                            *((f"bpb_reads_decile_{d}", v) for d, v in enumerate(row.deciles or []))):
            if value is not None and value == value:  # nan: an empty bucket
                metrics[f"{name}.{slug}"] = value
        tracking.log_metrics(run_id, metrics, i)
    for c in comparisons:
        slug = _slug(f"{c.what}.{c.a.split(' | ')[1]}-{c.b}.{c.bucket}")[:200]
        tracking.log_metrics(run_id, {f"diff.{slug}": c.difference, f"diff_low.{slug}": c.low,
                                      f"diff_high.{slug}": c.high}, 0)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "evaluation.json").write_text(json.dumps(
            {"rows": [asdict(r) for r in rows], "comparisons": [asdict(c) for c in comparisons]}, indent=2))
        Path(tmp, "alpha_curve.png").write_bytes(alpha_curve_png([asdict(r) for r in rows], text.name))
        tracking.log_artifacts(run_id, Path(tmp), "evaluation")
    tracking.finish(run_id)
    return run_id
