"""Evaluation assets: held-out bits per byte of the trained models, and the zero-shot swap.

Both are partitioned like the models (one partition per training spec, `assets/specs.py`), read
the models trained from that spec and record one MLflow run each, linked from the metadata.
"""

import dagster as dg

from assets.figures import png_markdown
from assets.groups import EVALUATION, owners
from assets.partitions import training_spec_partitions
from assets.resources import WorkspaceResource
from assets.retrieval import faiss_index
from assets.specs import spec_of
from assets.training import baseline_checkpoint, retro_checkpoint, retrofit_checkpoint
from retro_ops.default_corpora import DEMO_CORPUS, DEMO_RETRIEVAL_SET, DEMO_UNRELATED_SET

# Each body imports the library stages it runs: the location loads light (assets/definitions.py).


def _bpb_markdown(rows) -> str:
    def num(v):
        return "" if v is None or v != v else f"{v:.4f}"
    lines = ["| model | setting | bits/byte | first chunks | reads | reads alpha<=12.5% | "
             "reads alpha 12.5-50% | reads alpha>50% | alpha>50% share |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.setting} | {num(r.bits_per_byte)} | {num(r.bpb_first)} | {num(r.bpb_reads)} | "
              f"{num(r.bpb_reads_low)} | {num(r.bpb_reads_mid)} | {num(r.bpb_reads_high)} | "
              f"{num(r.leaky_share)} |" for r in rows]
    return "\n".join(lines)


def _intervals_markdown(comparisons) -> str:
    lines = ["| a | b | bucket | bpb a - b | 95% interval (documents resampled) |", "|---|---|---|---|---|"]

    def cell(label) -> str:  # labels read "model | setting": a bare pipe would split the cell
        return str(label).replace("|", "\\|")

    lines += [f"| {cell(c.a)} | {cell(c.b)} | {c.bucket} | {c.difference:+.4f} | [{c.low:+.4f}, {c.high:+.4f}] |"
              for c in comparisons]
    return "\n".join(lines)


EVALUATION_ASSET = dict(partitions_def=training_spec_partitions, group_name=EVALUATION,
                        owners=owners(EVALUATION), kinds={"pytorch", "mlflow"}, code_version="1")


def _report_metadata(report) -> dict:
    """What both evaluation assets show: the bpb table, its rows, and the paired differences with
    their intervals (as a table for the UI and as rows the CLI prints)."""
    from retro_ops.evaluation.plots import alpha_curve_png

    rows = report.table()
    return {"bpb_table": dg.MetadataValue.md(_bpb_markdown(report.rows)),
            "alpha_curve": png_markdown(alpha_curve_png(rows, report.text), "bpb by overlap alpha"),
            "rows": dg.MetadataValue.json(rows),
            "intervals": dg.MetadataValue.md(_intervals_markdown(report.comparisons)),
            "comparisons": dg.MetadataValue.json(report.comparison_table()),
            "leaky_share": round(report.leaky_share, 4)}


def _run_link(ws, run_id: str | None) -> dict:
    from retro_ops.catalog.mlflow_runs import Tracking
    from retro_ops.lineage.publish import mlflow_run_url

    return {"mlflow_run": dg.MetadataValue.url(mlflow_run_url(Tracking(ws.settings), run_id))} if run_id else {}


class EvaluationConfig(dg.Config):
    """unrelated_sets: retrieval sets of another domain, scored as control rows (those that do
    not exist in this home are skipped, with a note)."""

    unrelated_sets: list[str] = [DEMO_UNRELATED_SET]


@dg.asset(**EVALUATION_ASSET, deps=[baseline_checkpoint, retro_checkpoint, retrofit_checkpoint])
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
               workspace: WorkspaceResource) -> dg.MaterializeResult:
    """Held-out bits per byte on the test documents: baseline; RETRO (and RETROfit, when
    trained) without retrieval, with the training retrieval set, and the controls (that set's
    neighbours shuffled, the oracle, unrelated sets). Models are the ones trained from this spec."""
    from retro_ops.evaluation.compare import evaluate_models, heldout_text
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import find_model

    ws = workspace.open()
    spec = spec_of(context).spec()
    data = prepare_training(ws, spec)
    found = {kind: find_model(ws, data, kind) for kind in ("baseline", "retro", "retrofit")}
    if found["baseline"] is None or found["retro"] is None:
        raise dg.Failure("train baseline_checkpoint and retro_checkpoint first")
    models = [info for info in found.values() if info is not None]
    text = heldout_text(ws, spec.corpus, spec.split, spec.model.chunk_size, part="test")
    known = {r.name for r in ws.catalog.list_retrieval_sets()}
    unrelated = [name for name in config.unrelated_sets if name in known and name != spec.retrieval_set]
    if len(unrelated) < len(config.unrelated_sets):
        context.log.info(f"unrelated sets not in this home, skipped: "
                         f"{sorted(set(config.unrelated_sets) - set(unrelated))}")
    report = evaluate_models(ws, models, text, [spec.retrieval_set], k=spec.neighbours.k,
                             dagster_run_id=context.run.run_id, unrelated_sets=tuple(unrelated))
    best = {r.setting + r.kind: r.bits_per_byte for r in report.rows}
    return dg.MaterializeResult(metadata={
        "text": report.text, "documents": len(text.doc_ids), "mlflow_run_id": report.mlflow_run_id,
        "bpb_baseline": round(best["no retrievalbaseline"], 4),
        "bpb_retro_with_retrieval": round(best[f"set {spec.retrieval_set}retro"], 4),
        **_report_metadata(report), **_run_link(ws, report.mlflow_run_id),
    })


class SwapEvaluationConfig(dg.Config):
    """on: the corpus whose held-out documents are evaluated; sets: the retrieval sets to swap
    in (no retraining); model: a model reference, "" = the RETRO trained from the training spec."""

    on: str = DEMO_CORPUS
    sets: list[str] = [DEMO_RETRIEVAL_SET, DEMO_CORPUS]
    model: str = ""


@dg.asset(**EVALUATION_ASSET,
          deps=[retro_checkpoint, dg.AssetDep(faiss_index, partition_mapping=dg.AllPartitionMapping())])
def swap_evaluation(context: dg.AssetExecutionContext, config: SwapEvaluationConfig,
                    workspace: WorkspaceResource) -> dg.MaterializeResult:
    """Zero-shot transfer: one model on another domain's held-out text with no retrieval, the
    training set, and each swapped-in set; one MLflow run whose inputs are the sets used."""
    from retro_ops.evaluation.compare import evaluate_models, heldout_text
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import find_model

    ws = workspace.open()
    spec = spec_of(context).spec()
    data = prepare_training(ws, spec)
    info = ws.catalog.resolve_model(config.model) if config.model else find_model(ws, data, "retro")
    if info is None:
        raise dg.Failure("no RETRO model trained from this spec yet: materialize retro_checkpoint")
    baseline = find_model(ws, data, "baseline")  # the paired row: same text, no retrieval (#14)
    text = heldout_text(ws, config.on, spec.split, spec.model.chunk_size, part="test")
    report = evaluate_models(ws, [info] + ([baseline] if baseline else []), text, list(config.sets),
                             k=info.config["n_neighbours"], dagster_run_id=context.run.run_id,
                             controls=False)  # the controls are the evaluation asset's
    return dg.MaterializeResult(metadata={
        "text": report.text, "documents": len(text.doc_ids), "model": info.ref,
        "mlflow_run_id": report.mlflow_run_id, **_report_metadata(report), **_run_link(ws, report.mlflow_run_id),
        **{f"bpb_{'baseline_' if r.kind == 'baseline' else ''}{r.setting.replace(' ', '_')}":
           round(r.bits_per_byte, 4) for r in report.rows},
    })
