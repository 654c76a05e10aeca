"""`retro-ops lineage model|doc|chunk|diff|verify` and `retro-ops audit sql`.

A summary on screen (or the whole answer with --json); with --csv DIR the full row lists
(documents, chunks, neighbours, evaluations, deployments...) go to one CSV file each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from retro_ops.cli.common import JsonOpt, audit_db, emit_json, fail, out
from retro_ops.cli.reports import print_report, write_csv
from retro_ops.errors import RetroOpsError
from retro_ops.lineage.limits import AuditLimits

AUDIT_LIMITS = AuditLimits()  # the defaults the options show

lineage_app = typer.Typer(no_args_is_help=True, help="Audit lineage: backward from a model, forward "
                                                     "from a document or chunk, diffs, verification.")
audit_app = typer.Typer(no_args_is_help=True, help="Ad-hoc read-only SQL over the lineage views.")
CsvOpt = Annotated[Optional[Path], typer.Option("--csv", help="Write the full lists as CSV files "
                                                              "into this folder.")]


@lineage_app.command("model")
def lineage_model(ref: Annotated[str, typer.Argument(help="NAME/VERSION, model-ID, or a kind.")],
                  json_out: JsonOpt = False, csv_dir: CsvOpt = None) -> None:
    """Backward: the documents, sources, chunks, neighbours, index, code and runs behind a model."""
    from retro_ops.lineage.audit import backward

    try:
        with audit_db() as db:
            found = backward(db, ref)
    except RetroOpsError as exc:
        fail(str(exc))
    print_report(f"lineage of {found.summary['model']}", found.summary, found.lists, json_out, csv_dir)


@lineage_app.command("doc")
def lineage_doc(path_or_doc_id: Annotated[str, typer.Argument(help="A doc id, or a source path.")],
                json_out: JsonOpt = False, csv_dir: CsvOpt = None) -> None:
    """Forward: every corpus version, set version, index, model and deployment a document reached,
    and the logged generations that retrieved one of its chunks."""
    from retro_ops.lineage.audit import forward_document, resolve_documents, with_generations

    try:
        with audit_db() as db:
            found = [with_generations(db, forward_document(db, d)) for d in resolve_documents(db, path_or_doc_id)]
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json([{"summary": f.summary, **f.lists} for f in found])
        return
    for f in found:
        print_report(f"document {f.summary['doc_id']}", f.summary, f.lists, False,
                csv_dir / f.summary["doc_id"] if csv_dir else None)


@lineage_app.command("chunk")
def lineage_chunk(chunk_id: Annotated[int, typer.Argument(help="A chunk id.")],
                  json_out: JsonOpt = False, csv_dir: CsvOpt = None) -> None:
    """Forward from one chunk: sets, indices, models that trained on or read it, deployments,
    and the logged generations that retrieved it."""
    from retro_ops.lineage.audit import forward_chunk, with_generations

    try:
        with audit_db() as db:
            found = with_generations(db, forward_chunk(db, chunk_id))
    except RetroOpsError as exc:
        fail(str(exc))
    print_report(f"chunk {chunk_id}", found.summary, found.lists, json_out, csv_dir)


@lineage_app.command("diff")
def lineage_diff(ref_a: Annotated[str, typer.Argument(help="A model, or set:NAME[@VERSION_ID].")],
                 ref_b: Annotated[str, typer.Argument(help="Of the same kind as REF_A.")],
                 json_out: JsonOpt = False, csv_dir: CsvOpt = None) -> None:
    """Documents and chunks in B and not A (added) and in A and not B (removed)."""
    from retro_ops.lineage.diff import diff

    try:
        with audit_db() as db:
            found = diff(db, ref_a, ref_b)
    except RetroOpsError as exc:
        fail(str(exc))
    names = ("documents_added", "documents_removed", "chunks_added", "chunks_removed")
    if json_out:
        emit_json({"summary": found.summary(), **{n: getattr(found, n) for n in names}})
        return
    lists = {n: [{"id": v} for v in getattr(found, n)] for n in names}
    print_report(f"{found.a} -> {found.b}", found.summary(), lists if csv_dir else {}, False, csv_dir)


@lineage_app.command("verify")
def lineage_verify(ref: Annotated[str, typer.Argument(help="NAME/VERSION, model-ID, or a kind.")],
                   json_out: JsonOpt = False) -> None:
    """Re-derive every recorded digest from storage; exit 1 on any drift."""
    from retro_ops.lineage.verify import verify

    try:
        with audit_db() as db:
            report = verify(db, ref)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(report.as_dict())
    else:
        table = Table("check", "ok", "detail", title=f"verify {report.model}")
        for c in report.checks:
            table.add_row(c.what, "[red]DRIFT[/red]" if not c.ok else "[green]ok[/green]" if c.covered
                          else "[yellow]not covered[/yellow]", c.detail)
        out.print(table)
    if report.drift:
        raise typer.Exit(1)


@audit_app.command("sql")
def audit_sql(query: Annotated[str, typer.Argument(help="One SELECT over the views (catalog tables, "
                                                        "documents, chunks, retrieval_set_chunks, model_reads).")],
              json_out: JsonOpt = False,
              csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write rows to this CSV file.")] = None,
              timeout: Annotated[float, typer.Option(
                  min=0.01, help="Seconds the statement may run before it is interrupted.")] = AUDIT_LIMITS.timeout_s,
              memory_limit_mib: Annotated[int, typer.Option(
                  min=16, help="DuckDB's memory limit in MiB; past it the query fails (nothing "
                               "spills to disk).")] = AUDIT_LIMITS.memory_limit_mib,
              threads: Annotated[int, typer.Option(min=1, help="DuckDB worker threads.")] = AUDIT_LIMITS.threads,
              ) -> None:
    """Ad-hoc read-only SQL (DuckDB); anything that would write, attach or export is refused, and
    a statement past the time or memory limit is stopped with the limit named (exit 2)."""
    from retro_ops.lineage.sql import run_sql

    limits = AuditLimits(memory_limit_mib=memory_limit_mib, threads=threads, timeout_s=timeout)
    try:
        with audit_db(limits) as db:
            rows = run_sql(db, query).to_pylist()
    except RetroOpsError as exc:
        fail(str(exc))
    if csv_file is not None:
        write_csv(csv_file.parent, csv_file.stem, rows) if csv_file.suffix == ".csv" \
            else write_csv(csv_file, "result", rows)
    if json_out:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*(rows[0].keys() if rows else ["(no rows)"]))
    for row in rows[:200]:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    out.print(table)
