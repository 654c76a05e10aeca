"""`retro-ops train | eval | generate | models`: train through Dagster, evaluate, explain."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from retro_ops.cli.common import (
    JsonOpt, ModelOpt, corpus_option, emit_json, err, fail, invocation, open_catalog, open_workspace, out,
    set_option,
)
from retro_ops.cli.tables import print_alpha_deciles, print_comparisons, print_eval_rows
from retro_ops.default_corpora import DEMO_CORPUS, DEMO_RETRIEVAL_SET
from retro_ops.errors import RetroOpsError
from retro_ops.training.config import NeighbourConfig, TrainConfig

models_app = typer.Typer(no_args_is_help=True, help="List trained models and their lineage.")
#: what `train` materializes by default: the demo's swap evaluation (`swap_evaluation`) reads the
#: demo corpora's names, so on a home of your own it is run only when `--select` names it
TRAIN_ASSETS = ["training_neighbours", "baseline_checkpoint", "retro_checkpoint", "retrofit_checkpoint",
                "evaluation"]
SetsOpt = Annotated[Optional[list[str]], set_option("The model is evaluated with each one swapped in.",
                                                     repeatable=True)]


def train_command(
    ctx: typer.Context,
    corpus: Annotated[str, corpus_option("The models are trained on its documents.")] = DEMO_CORPUS,
    retrieval_set: Annotated[str, set_option("Training neighbours are retrieved from it.")] = DEMO_RETRIEVAL_SET,
    steps: Annotated[int, typer.Option(min=1, help="Optimisation steps (each model).")] = TrainConfig.steps,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = TrainConfig.batch_size,
    k: Annotated[int, typer.Option(min=1, help="Neighbours per chunk.")] = NeighbourConfig.k,
    seed: Annotated[int, typer.Option(help="Data order, initialisation and split seed.")] = TrainConfig.seed,
    self_neighbours: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of training chunks given their own continuation as one "
                               "neighbour, which teaches RETRO to read neighbours (0 = off).")
    ] = TrainConfig.self_neighbours,
    self_neighbour_shift: Annotated[int, typer.Option(
        min=0, help="Move each such copy by up to this many tokens, so it is read by content, "
                    "not by position.")] = TrainConfig.self_neighbour_shift,
    self_neighbour_noise: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="Drop or replace this share of each copy's tokens, as a retrieved "
                                "revision of the text differs.")] = TrainConfig.self_neighbour_noise,
    no_neighbour_share: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="Withhold every neighbour of this share of training chunks, so "
                                "RETRO also predicts well with nothing retrieved.")] = TrainConfig.no_neighbour_share,
    distractor_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Give this share of training chunks another chunk's neighbours, so "
                               "RETRO learns to ignore neighbours that do not match.")] = TrainConfig.distractor_share,
    select: Annotated[Optional[str], typer.Option(
        help=f"Comma-separated model assets (default: {', '.join(TRAIN_ASSETS)}; "
             "swap_evaluation only when named).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train RETRO, its baseline and a RETROfit through Dagster, then evaluate them."""
    from assets.launch import MODELS
    from assets.resources import TrainingResource
    from retro_ops.cli.runs import print_outcomes, run_materializations

    training = TrainingResource(corpus=corpus, retrieval_set=retrieval_set, steps=steps,
                                batch_size=batch_size, k=k, seed=seed,
                                self_neighbours=self_neighbours, self_neighbour_shift=self_neighbour_shift,
                                self_neighbour_noise=self_neighbour_noise,
                                no_neighbour_share=no_neighbour_share, distractor_share=distractor_share)
    selection = [s.strip() for s in select.split(",") if s.strip()] if select else TRAIN_ASSETS
    outcomes = run_materializations([(MODELS, "models")], selection, json_out, training=training,
                                    launched_by=invocation(ctx).launched_by)
    print_outcomes(outcomes, json_out)
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


def eval_command(
    model: ModelOpt,
    retrieval_set: SetsOpt = None,
    on: Annotated[str, typer.Option(help="`heldout` (the held-out documents of the model's own "
                                         "split of its training corpus), a corpus name (its held-out "
                                         "documents under that split) or CORPUS:all.")] = "heldout",
    part: Annotated[str, typer.Option(
        help="Which held-out documents: `test` (what is reported), `validation` (for tuning) or "
             "`heldout` (both). Models recorded before the split had parts: test is all held-out.")] = "test",
    controls: Annotated[bool, typer.Option(
        help="Also score the control rows: the first set's neighbours shuffled across chunks, and "
             "the oracle (the exact text that follows as a neighbour).")] = True,
    leakage_filter: Annotated[bool, typer.Option(
        "--leakage-filter", help="Drop retrieval-set documents that near-duplicate an evaluated "
                                 "document (MinHash LSH) from the neighbours, for this evaluation.")] = False,
    max_leaky_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Fail when more than this share of evaluated chunks copy over half "
                               "their tokens from their neighbours (alpha > 50%).")] = 0.1,
    allow_leakage: Annotated[bool, typer.Option(
        "--allow-leakage", help="Report the leaky share but do not fail on it.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Bits per byte of a model with no retrieval and with each retrieval set, no retraining,
    on documents it never trained on (any training document is refused), with 95% paired
    bootstrap intervals and buckets by overlap alpha (the paper's leakage analysis)."""
    from retro_ops.evaluation.compare import evaluate_models, model_heldout_text

    ws = open_workspace()
    try:
        info = ws.catalog.resolve_model(model)
        corpus_name, _, whole = ("" if on == "heldout" else on).partition(":")
        if part not in ("test", "validation", "heldout"):
            fail(f"--part {part!r}: choose test, validation or heldout")
        text = model_heldout_text(ws, info, corpus_name or None, whole == "all", part)
        report = evaluate_models(ws, [info], text, list(retrieval_set or []), k=info.config["n_neighbours"],
                                 leakage_filter=leakage_filter, controls=controls)
    except RetroOpsError as exc:
        fail(str(exc))
    leaky = report.leaky_share > max_leaky_share
    if json_out:
        emit_json({"text": report.text, "mlflow_run_id": report.mlflow_run_id, "rows": report.table(),
                   "comparisons": report.comparison_table(), "leakage_filter": leakage_filter,
                   "leaky_share": report.leaky_share, "leaky_share_ok": not leaky})
    else:
        print_eval_rows(report.table(), f"{report.text} ({len(text.doc_ids)} documents)")
        print_alpha_deciles(report.table())
        print_comparisons(report.comparison_table())
    if leaky and not allow_leakage:
        fail(f"{report.leaky_share:.1%} of evaluated chunks have overlap alpha > 50% with their "
             f"neighbours (limit {max_leaky_share:.1%}): use --leakage-filter, or --allow-leakage")


def generate_command(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    model: ModelOpt = "retro",
    retrieval_set: Annotated[Optional[str], set_option("Each completed chunk retrieves its neighbours "
                                                       "from it (default: no retrieval).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1024)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.8,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Continue a prompt and show the neighbours each chunk retrieved (explainability)."""
    from retro_ops.features.chunking import load_tokenizer
    from retro_ops.serving.generator import Generator
    from retro_ops.training.verified import load_verified

    from retro_ops.cli.generations import open_generation_log
    from retro_ops.generations.records import record_of

    ws = open_workspace()
    try:
        info = ws.catalog.resolve_model(model)
        retriever = ws.retriever(retrieval_set) if retrieval_set else None
        verified = load_verified(info)  # every checkpoint file checked against the catalog
        generator = Generator(verified.model, verified.vocab,
                              load_tokenizer(ws.embedder.space.model_path), retriever)
        log = open_generation_log(ws)
        result = generator.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=seed)
    except (RetroOpsError, ValueError) as exc:
        fail(str(exc))
    record = record_of(result, source="cli", model_info=info, retriever=retriever,
                       params={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed})
    if log is not None:
        log.record(record)
        log.close()  # one row: committed before the command returns
        err.print(f"logged as request {record.request_id}")
    if json_out:
        emit_json({**asdict(result), "model": info.ref, "retrieval_set": retrieval_set,
                   "request_id": record.request_id if log is not None else None})
        return
    out.print(f"[bold]{prompt}[/bold] {result.text}", highlight=False)
    err.print(f"{result.new_tokens} tokens by {info.ref}; model {result.model_seconds:.2f} s, "
              f"retrieval {result.retrieval_seconds:.2f} s")
    for r in result.retrievals:
        out.print(f"\n[dim]chunk {r.chunk}:[/dim] {r.text[:120]}", highlight=False)
        for n in r.neighbours:
            after = (f"(continuation: chunk {n.continuation_chunk_id}, excluded by exclusion "
                     f"{n.continuation_excluded_by})" if n.continuation_excluded_by is not None
                     else n.continuation_text[:60])
            out.print(f"  {n.rank}. ({n.score:.3f}) {n.text[:100]} [dim]{after}[/dim]", highlight=False)


@models_app.command("list")
def models_list(json_out: JsonOpt = False) -> None:
    """Trained models with their kind, registry version and the data versions behind them:
    corpus version, retrieval-set version, index build and parent (`retro-ops lineage model REF`
    for the whole story)."""
    catalog = open_catalog()
    models = catalog.list_models()
    refs = {m.id: m.ref for m in models}
    corpora = {v: catalog.corpus_name_of_version(v) for v in {m.corpus_version_id for m in models}}
    sets = {v: catalog.retrieval_set_version(v).retrieval_set
            for v in {m.retrieval_set_version_id for m in models} if v is not None}
    rows = [{"ref": m.ref, "kind": m.kind, "corpus_version": f"{corpora[m.corpus_version_id]}@{m.corpus_version_id}",
             "retrieval_set_version": f"{sets[m.retrieval_set_version_id]}@{m.retrieval_set_version_id}"
             if m.retrieval_set_version_id else None,
             "index_build": m.index_build_id, "parent": refs.get(m.parent_model_id),
             "checkpoint": Path(m.checkpoint_dir).name} for m in models]
    if json_out:
        emit_json([{**asdict(m), **row} for m, row in zip(models, rows)])
        return
    table = Table("ref", "kind", "corpus version", "retrieval-set version", "index build", "parent",
                  "checkpoint")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    out.print(table if models else "no models yet: retro-ops train")
