"""Run materializations through Dagster with progress (bars on a terminal, lines in a log),
and summarise their outcomes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from retro_ops.cli.common import emit_json, err, fail, file_console, out, settings
from retro_ops.cli.progress import progress_for
from retro_ops.cli.tables import print_alpha_deciles, print_comparisons, print_eval_rows, print_eval_summary


def run_materializations(jobs: list[tuple[str, str]], selection: list[str] | None,
                         json_out: bool, asset_config: dict | None = None, training=None,
                         launched_by: str = "cli") -> list:
    """jobs: (partitions definition, key) pairs, run one after the other on the UI's instance
    (closed after them: a worker serves many commands in one process), tagged `launched_by`."""
    from assets.launch import ASSETS_BY_PARTITION, ReportedProgress, materialize_partition
    from assets.instance import dagster_instance

    outcomes = []
    with dagster_instance(settings()) as instance, progress_for(err, transient=json_out) as progress:
        for index, (partitions, key) in enumerate(jobs, start=1):
            names = ASSETS_BY_PARTITION[partitions]
            chosen = [s for s in selection if s in names] if selection else None
            progress.run(index, len(jobs), key, chosen or names)
            try:
                outcomes.append(materialize_partition(
                    instance, partitions, key, selection=chosen, asset_config=asset_config,
                    progress=ReportedProgress().attach(progress), on_step=progress.step, training=training,
                    launched_by=launched_by))
            except ValueError as exc:
                fail(str(exc))
    return outcomes


def _row(asset) -> tuple[str, str, str, str]:
    md = asset.metadata
    rows = md.get("chunks", md.get("ntotal", md.get("documents", "-")))
    new = md.get("newly_embedded", md.get("new_chunks", md.get("new_documents",
                                                                  md.get("new_version", "-"))))
    if "chunks_per_second" in md:
        note = f"{md['chunks_per_second']:.1f} chunks/s"
    elif "tokens_per_second" in md:
        note = f"{md['tokens_per_second']:,.0f} tokens/s"
    elif "final_loss" in md:
        note = f"loss {md['final_loss']:.3f}, {md['tokens_per_second']:,.0f} tokens/s"
    elif md.get("reused") is True:  # an index or model built before from the same inputs
        note = "reused (same config and inputs)"
    elif "recall_at_10" in md:
        note = (f"{md['factory']}: recall@10 {md['recall_at_10']:.3f}, p50 {md['p50_ms']:.2f} ms, "
                f"{md['batch_qps']:,.0f} q/s")
    else:
        note = ""
    version = md.get("lancedb_version", md.get("members_lancedb_version", "-"))
    return str(rows), str(new), note, str(version)


EVALUATIONS = ("evaluation", "swap_evaluation")


def print_outcomes(outcomes, json_out: bool, *, full_tables_to: Path | None = None) -> None:
    """A table per run; then each evaluation's tables, or (with `full_tables_to`) a short
    summary, the full tables going to that file."""
    if json_out:
        emit_json([asdict(o) for o in outcomes])
        return
    evaluations = []
    for o in outcomes:
        status = "[green]ok[/green]" if o.success else f"[red]failed[/red]: {o.error}"
        out.print(f"\n[bold]{o.partition}[/bold] run {o.run_id[:8]} {status}")
        table = Table("asset", "rows", "new", "speed / quality", "LanceDB version", "checks")
        for a in o.assets:
            failed = [k for k, v in a.checks.items() if not v]
            checks = (f"FAILED: {', '.join(failed)}" if failed else
                      f"{len(a.checks)} passed" if a.checks else "-")
            rows, new, note, version = _row(a)
            table.add_row(a.asset, rows, new, note, version, checks)
        out.print(table)
        evaluations += [a.metadata for a in o.assets if a.asset in EVALUATIONS and a.metadata.get("rows")]
        issues = next((a.metadata.get("issue_list") for a in o.assets if a.asset == "documents"), "")
        if issues and issues != "none":
            out.print("[yellow]read issues[/yellow] (these inputs were skipped or repaired):")
            out.print(issues, markup=False, highlight=False)
    if full_tables_to is None or not evaluations:
        for md in evaluations:
            _print_evaluation(md, out)
        return
    full_tables_to.parent.mkdir(parents=True, exist_ok=True)
    with full_tables_to.open("w", encoding="utf-8") as sink:
        for md in evaluations:
            _print_evaluation(md, file_console(sink))
    out.print()
    print_eval_summary(evaluations)
    out.print(f"Full tables (alpha buckets and deciles, controls, every paired difference): "
              f"{full_tables_to}", highlight=False, soft_wrap=True)


def _print_evaluation(md: dict, console) -> None:
    print_eval_rows(md["rows"], f"bits per byte on {md.get('text', '')}", console)
    print_alpha_deciles(md["rows"], console)
    print_comparisons(md.get("comparisons") or [], console)
