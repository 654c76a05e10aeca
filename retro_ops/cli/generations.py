"""`retro-ops generations search|show|prune|affected`: the log of every served answer.

Every `/generate`, `retro-ops generate` and pyfunc call is logged (LanceDB table `generations`
under the home, plus an MLflow trace) unless opted out. Settings, from the environment:
RETRO_OPS_GENERATION_LOG=off (no log), RETRO_OPS_GENERATION_LOG_HASH=on (sha256 of prompt and
output instead of their text), RETRO_OPS_GENERATION_LOG_FLUSH_EVERY (32 rows) and
RETRO_OPS_GENERATION_LOG_FLUSH_SECONDS (2), RETRO_OPS_GENERATION_LOG_TRACES=off (no MLflow
traces), RETRO_OPS_GENERATION_RETENTION_DAYS (prune older generations when a writer starts).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Optional

import typer
from rich.table import Table

from retro_ops.cli.common import (
    ActorOpt, IncludeExcludedOpt, JsonOpt, emit_json, err, excluded_note, fail, open_workspace, out, reader,
)
from retro_ops.errors import RetroOpsError

generations_app = typer.Typer(no_args_is_help=True, help=(
    "The generation log: every served answer with its model, retrieval-set version and the "
    "chunks it retrieved. " + __doc__.split("\n\n", 1)[1].replace("\n", " ")))
_PERIOD = re.compile(r"(\d+(?:\.\d+)?)([dh])")


def open_generation_log(ws):
    """The process's generation log from the environment's settings (None when opted out)."""
    from retro_ops.generations.log import open_log
    from retro_ops.generations.records import GenerationLogConfig

    return open_log(ws.store, ws.embedder, GenerationLogConfig.from_env(os.environ), ws.settings)


def _clip(text: Optional[str], n: int = 80) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[:n - 1] + "…"


@generations_app.command("search")
def generations_search(
    text: Annotated[str, typer.Argument(help="Text to look for, by meaning (embedded like chunks).")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many generations.")] = 5,
    json_out: JsonOpt = False,
) -> None:
    """Generations whose output is nearest TEXT (cosine similarity of output embeddings)."""
    from retro_ops.generations.search import search

    ws = open_workspace()
    try:
        rows = search(ws.store, ws.embedder, text, k)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(rows)
        return
    table = Table("score", "request id", "when", "model", "set@version", "output")
    for r in rows:
        table.add_row(f"{r['score']:.3f}", r["request_id"], str(r["created_at"])[:19], r["model"],
                      f"{r['retrieval_set']}@{r['retrieval_set_version']}",
                      f"sha256 {r['output_sha256'][:16]}" if r["text_hashed"] else _clip(r["output"]))
    out.print(table if rows else "no generations logged yet")


@generations_app.command("show")
def generations_show(request_id: Annotated[str, typer.Argument(help="A request id (returned by "
                                                                    "/generate as `request_id`).")],
                     include_excluded: IncludeExcludedOpt = False, actor: ActorOpt = "",
                     json_out: JsonOpt = False) -> None:
    """One generation: prompt, output, params, versions, and per completed chunk the neighbours it
    read with their text and sources (an excluded neighbour: its id and the exclusion covering it)."""
    from retro_ops.generations.search import show

    ws = open_workspace()
    try:
        row = show(ws.store, ws.catalog, request_id,
                   reveal_to=reader(actor) if include_excluded else None)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(row)
        return
    for key in ("request_id", "created_at", "source", "model", "retrieval_set",
                "retrieval_set_version", "deployment_id", "params"):
        out.print(f"[bold]{key}[/bold]: {row[key]}", highlight=False)
    if row["text_hashed"]:
        out.print(f"prompt sha256 {row['prompt_sha256']}\noutput sha256 {row['output_sha256']}")
    else:
        out.print(f"[bold]prompt[/bold]: {row['prompt']}\n[bold]output[/bold]: {row['output']}",
                  highlight=False)
    for use in row["neighbours"]:
        out.print(f"\n[dim]chunk {use['chunk']}:[/dim]")
        for n in use["neighbours"]:
            if n["text"] is None:
                text = excluded_note(n["excluded"]) if n["excluded"] else "(no longer in the store)"
            else:
                text = _clip(n["text"], 90) + (f" [yellow]({excluded_note(n['excluded'])}, shown for "
                                                "audit)[/yellow]" if n["excluded"] else "")
            where = f" [dim]{';'.join(n['sources'])}[/dim]" if n["sources"] else ""
            out.print(f"  ({n['score']:.3f}) {n['chunk_id']} {text}{where}", highlight=False)


@generations_app.command("prune")
def generations_prune(
    older_than: Annotated[Optional[str], typer.Option(
        "--older-than", help="Age such as 30d or 12h (default: $RETRO_OPS_GENERATION_RETENTION_DAYS).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete generations older than a period, compact the table and remove old files, so their
    text is gone from storage; their MLflow traces are deleted too."""
    from dataclasses import asdict

    from retro_ops.generations.records import RETENTION_ENV
    from retro_ops.generations.retention import cutoff_days, prune_older_than

    period = older_than or (f"{os.environ[RETENTION_ENV]}d" if os.environ.get(RETENTION_ENV) else None)
    if period is None:
        fail(f"--older-than: give an age such as 30d (or set ${RETENTION_ENV})")
    found = _PERIOD.fullmatch(period.strip())
    if not found or float(found.group(1)) <= 0:
        fail(f"--older-than {period!r}: use a positive number of days or hours, such as 30d or 12h")
    days = float(found.group(1)) / (24 if found.group(2) == "h" else 1)
    ws = open_workspace()
    try:
        report = prune_older_than(ws.store, cutoff_days(days), settings=ws.settings)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(asdict(report))
    else:
        out.print(f"deleted {report.deleted} generations older than {report.cutoff:%Y-%m-%d %H:%M} UTC "
                  f"({report.kept} kept, table version {report.version}); "
                  f"{report.traces_deleted} MLflow traces deleted")


@generations_app.command("purge", hidden=True)
def generations_purge(
    older_than: Annotated[Optional[str], typer.Option("--older-than", help="As for `prune`.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Deprecated: the old name of `generations prune` ("purge" is the erasure of a document)."""
    err.print("note: `retro-ops generations purge` is deprecated; use `retro-ops generations prune`",
              highlight=False)
    generations_prune(older_than, json_out)


@generations_app.command("affected")
def generations_affected(
    exclusion: Annotated[Optional[int], typer.Option(help="An exclusion id (see `retro-ops exclude list`).")] = None,
    chunk: Annotated[Optional[int], typer.Option(help="A chunk id.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Past generations that retrieved an excluded text (or one chunk): what an exclusion affected."""
    from retro_ops.generations.search import retrieving
    from retro_ops.lineage.audit import generations_affected_by_exclusion
    from retro_ops.lineage.views import AuditDB

    if (exclusion is None) == (chunk is None):
        fail("give exactly one of --exclusion ID or --chunk ID")
    ws = open_workspace()
    try:
        if chunk is not None:
            rows = retrieving(ws.store, [chunk])
        else:
            with AuditDB(ws.catalog, ws.store) as db:
                rows = generations_affected_by_exclusion(db, exclusion)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(rows)
        return
    table = Table("request id", "when", "source", "model", "set@version", "chunks read")
    for r in rows:
        table.add_row(r["request_id"], str(r["created_at"])[:19], r["source"], r["model"],
                      f"{r['retrieval_set']}@{r['retrieval_set_version']}",
                      ", ".join(map(str, r["chunk_ids_read"])))
    out.print(table if rows else "no logged generation retrieved it")
