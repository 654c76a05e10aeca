"""`retro-ops`: the command line. Pipeline commands go through Dagster (same instance as the UI).

All state lives under RETRO_OPS_HOME (default ./.retro_ops). Every reporting command takes
--json; long work reports progress on stderr (bars on a terminal, plain lines in a log) so
stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from retro_ops.cli.common import (
    JsonOpt, corpus_option, fail, invocation, open_catalog, out, set_option, settings,
)
from retro_ops.cli.corpus import corpus_app
from retro_ops.cli.exclude import exclude_app
from retro_ops.cli.generations import generations_app
from retro_ops.cli.lineage import audit_app, lineage_app
from retro_ops.cli.profile import ProfileOpt, db_app, use_profile
from retro_ops.cli.models import eval_command, generate_command, models_app, train_command
from retro_ops.cli.retrieval import retrieval_set_app, retrieve
from retro_ops.cli.runs import print_outcomes, run_materializations
from retro_ops.cli.serve import serve_command
from retro_ops.cli.ui import ui
from retro_ops.cli.worker import worker_app

#: The commands in the order of the flow (corpora in, data materialized, sets, exclusions and
#: retrieval, models, serving, then the audit trail and the tools), each with a line that fits
#: 80 columns in `retro-ops --help`; `retro-ops COMMAND --help` and docs/reference/cli.md say more.
FLOW: dict[str, str] = {
    "demo": "Run the whole flow on the shipped corpora.",
    "corpus": "Register, list and move corpora.",
    "materialize": "Build documents, chunks, embeddings, indices (Dagster).",
    "retrieval-set": "Define and list retrieval sets.",
    "retrieve": "Nearest chunks of a text, with their sources.",
    "exclude": "Keep chunks, texts or documents out of retrieval.",
    "train": "Train RETRO, its baseline and a RETROfit (Dagster).",
    "eval": "Bits per byte with and without retrieval.",
    "models": "Trained models and the data behind them.",
    "generate": "Continue a prompt; show what each chunk retrieved.",
    "serve": "Serve generation and retrieval over HTTP.",
    "generations": "The log of served generations.",
    "lineage": "Which documents fed a model; where a document went.",
    "audit": "Read-only SQL over the lineage views.",
    "ui": "The Dagster UI on this home's instance.",
    "worker": "A warm local process for materialize and train.",
    "db": "The databases of a deployment (prod profile).",
}


class FlowGroup(TyperGroup):
    """Lists its commands in FLOW order (typer lists commands before groups, click by name)."""

    def list_commands(self, ctx) -> list[str]:
        order = list(FLOW)
        return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))


# Help in click's plain layout: at 80 columns an option's help gets 48 columns (a long option
# name takes a line of its own) where rich's table left it about 20 beside name and type columns.
app = typer.Typer(
    name="retro-ops", cls=FlowGroup, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Manage RETRO data and models together: corpora -> chunks -> embeddings -> indices -> "
         "models, with lineage. State lives under $RETRO_OPS_HOME (default ./.retro_ops).",
)


@app.callback()
def _setup(profile: ProfileOpt = None) -> None:
    use_profile(profile)
    # MLflow's per-download progress bars and INFO schema logs drown our own progress on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was


for _name, _group in (("corpus", corpus_app), ("retrieval-set", retrieval_set_app), ("exclude", exclude_app),
                      ("models", models_app), ("generations", generations_app), ("lineage", lineage_app),
                      ("audit", audit_app), ("worker", worker_app), ("db", db_app)):
    app.add_typer(_group, name=_name, short_help=FLOW[_name])
for _name, _command in (("retrieve", retrieve), ("train", train_command), ("eval", eval_command),
                        ("generate", generate_command), ("serve", serve_command), ("ui", ui)):
    app.command(_name, short_help=FLOW[_name])(_command)


# per model: half the benchmark's 300 (docs/results/retrieval.md), so that the demo fits 10 minutes
# on 2 cores of the slowest machine class (AVX2 only), where RETRO trains at ~1.6 s a step
DEMO_STEPS = 150
# RETROfit is left out unless asked for: RETRO from scratch reads as well (docs/results/retrieval.md)
# and the demo must fit 10 minutes on 2 cores of the slowest machine (issue #24)
DEMO_MODEL_ASSETS = ["training_neighbours", "baseline_checkpoint", "retro_checkpoint",
                     "evaluation", "swap_evaluation"]
RETROFIT_ASSET = "retrofit_checkpoint"


def _jobs(corpora: list[str] | None, sets: list[str] | None, selection: list[str] | None):
    """Which (partitions, key) to run: named ones, or every corpus then every retrieval set."""
    from assets.launch import ASSET_NAMES, ASSETS_BY_PARTITION, WHOLE
    from assets.partitions import CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS

    unknown = sorted(set(selection or []) - set(ASSET_NAMES))
    if unknown:
        fail(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(ASSET_NAMES)}")
    catalog = open_catalog()
    try:
        known_corpora = [c.name for c in catalog.list_corpora()]
        known_sets = [r.name for r in catalog.list_retrieval_sets()]
    finally:
        catalog.close()  # a worker serves many commands in one process: no engine left open
    for kind, named, known in (("corpus", corpora, known_corpora),
                               ("retrieval set", sets, known_sets)):
        missing = [n for n in named or [] if n not in known]
        if missing:
            fail(f"unknown {kind} {', '.join(missing)} (known: {', '.join(known) or 'none'})")
    if not corpora and not sets:
        corpora, sets = known_corpora, known_sets
    wants = {p: not selection or bool(set(selection) & set(names))
             for p, names in ASSETS_BY_PARTITION.items()}
    jobs = [(CORPUS_PARTITIONS, c) for c in corpora or [] if wants[CORPUS_PARTITIONS]]
    jobs += [(WHOLE, "all corpora")] if selection and wants[WHOLE] else []  # before sets: they drop duplicates
    jobs += [(RETRIEVAL_SET_PARTITIONS, r) for r in sets or [] if wants[RETRIEVAL_SET_PARTITIONS]]
    if not jobs:
        fail("nothing to materialize: add a corpus with `retro-ops corpus add NAME PATH`")
    return jobs


@app.command(short_help=FLOW["materialize"])
def materialize(
    ctx: typer.Context,
    corpus: Annotated[list[str] | None, corpus_option(
        "Its documents, chunks and embeddings are materialized.", repeatable=True)] = None,
    retrieval_set: Annotated[list[str] | None, set_option(
        "Its current chunks are pinned as a version and its index is built.", repeatable=True)] = None,
    select: Annotated[str | None, typer.Option(
        help="Comma-separated assets: documents, chunks, chunk_embeddings, chunk_scores, "
             "retrieval_set, faiss_index (default: all of the partitions named); "
             "near_duplicates (MinHash over every corpus, recorded as exclusions) only when named.")] = None,
    factory: Annotated[str, typer.Option(help="FAISS factory string for faiss_index "
                                              "(default: chosen by size).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Materialize assets through Dagster (the runs show in the UI). With no --corpus or
    --set: every corpus, then every retrieval set."""
    selection = [s.strip() for s in select.split(",") if s.strip()] if select else None
    jobs = _jobs(corpus, retrieval_set, selection)
    config = {"faiss_index": {"factory": factory}} if factory else None
    outcomes = run_materializations(jobs, selection, json_out, config,
                                    launched_by=invocation(ctx).launched_by)
    print_outcomes(outcomes, json_out)
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


# For tests: small corpora under the demo's names and a short training, through the same steps.
DemoCorporaOpt = Annotated[Optional[Path], typer.Option(
    "--corpora", hidden=True, exists=True, file_okay=False,
    help="A folder with one folder per demo corpus (kjv_nt/, asv_nt/, moby_dick/) read in place of "
         "the shipped ones.")]
DemoStepsOpt = Annotated[int, typer.Option("--steps", min=1, help=f"Training steps per model ({DEMO_STEPS}; "
                                                                 "the benchmarks train 300).")]
RetrofitOpt = Annotated[bool, typer.Option(
    "--retrofit", help="Also RETROfit the baseline (its decoder frozen, retrieval trained) and "
                       "evaluate it: a few minutes more on 2 cores.")]


@app.command(short_help=FLOW["demo"])
def demo(json_out: JsonOpt = False, corpora: DemoCorporaOpt = None, steps: DemoStepsOpt = DEMO_STEPS,
         retrofit: RetrofitOpt = False) -> None:
    """Run everything on the embedded default corpora, then say where to look."""
    from assets.launch import MODELS, WHOLE
    from assets.instance import dagster_instance, ensure_partition
    from assets.partitions import CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS
    from assets.resources import TrainingResource
    from retro_ops.default_corpora import DEFAULT_CORPORA, DEMO_CORPUS, DEMO_RETRIEVAL_SET

    resolved = settings()
    catalog = open_catalog(resolved)
    instance = dagster_instance(resolved)
    for name, (location, purpose) in DEFAULT_CORPORA.items():
        catalog.add_corpus(name, str(corpora / name if corpora else location))
        catalog.create_retrieval_set(name, [name], purpose)  # one retrieval set per corpus
        ensure_partition(instance, CORPUS_PARTITIONS, name)
        ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, name)
    jobs = [(CORPUS_PARTITIONS, n) for n in DEFAULT_CORPORA]
    jobs += [(WHOLE, "all corpora")]  # near-duplicates become exclusions before the sets are pinned
    jobs += [(RETRIEVAL_SET_PARTITIONS, n) for n in DEFAULT_CORPORA]
    outcomes = run_materializations(jobs, None, json_out)
    if all(o.success for o in outcomes):  # then RETRO and its baseline, evaluated
        outcomes += run_materializations(
            [(MODELS, "models")], demo_model_assets(retrofit), json_out,
            training=TrainingResource(corpus=DEMO_CORPUS, retrieval_set=DEMO_RETRIEVAL_SET,
                                      steps=steps))
    stamp = time.strftime('%Y%m%d-%H%M%S')
    print_outcomes(outcomes, json_out, full_tables_to=resolved.home / "reports" / f"demo-{stamp}.txt")
    curve = _alpha_curve(outcomes, resolved.home / "reports" / f"demo-{stamp}-alpha.png")
    if not json_out:
        if curve:
            out.print(f"\nthe copy curve (bpb against the share of each chunk found in its neighbours): {curve}")
        out.print(
            f"\n[bold]Built under {resolved.home}[/bold]\n"
            f"  catalog:   {resolved.catalog_url}\n"
            f"  LanceDB:   {resolved.lancedb_uri}\n"
            f"  indices:   {resolved.indices_dir}\n"
            f"  Dagster:   {resolved.dagster_home}\n"
            "Look around:\n"
            "  .venv/bin/retro-ops ui [--automation]  Dagster UI on http://127.0.0.1:3000\n"
            "  .venv/bin/retro-ops corpus list\n"
            "  .venv/bin/retro-ops retrieval-set list\n"
            "  .venv/bin/retro-ops retrieve 'Blessed are the meek' --set asv_nt -k 3\n"
            "  .venv/bin/retro-ops models list\n"
            "  .venv/bin/retro-ops generate 'And Jesus said unto them' --model retro --set asv_nt\n"
            "  .venv/bin/retro-ops eval --model retro --set asv_nt --set kjv_nt"
            "  (held-out KJV chapters: intervals, alpha buckets, the swap)\n"
            f"  MLflow runs, inputs and registered models: .venv/bin/mlflow ui --backend-store-uri "
            f"{resolved.mlflow_tracking_uri}"
        )
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


def demo_model_assets(retrofit: bool) -> list[str]:
    """The model assets the demo materializes, in order."""
    if not retrofit:
        return DEMO_MODEL_ASSETS
    at = DEMO_MODEL_ASSETS.index("retro_checkpoint") + 1
    return DEMO_MODEL_ASSETS[:at] + [RETROFIT_ASSET] + DEMO_MODEL_ASSETS[at:]


def _alpha_curve(outcomes, path: Path) -> Path | None:
    """The evaluation's bpb-by-alpha picture as a PNG file (None when no evaluation ran)."""
    from retro_ops.evaluation.plots import alpha_curve_png

    for o in outcomes:
        for a in o.assets:
            if a.asset == "evaluation" and a.metadata.get("rows"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(alpha_curve_png(a.metadata["rows"], a.metadata.get("text", "evaluation")))
                return path
    return None


if __name__ == "__main__":
    app()
