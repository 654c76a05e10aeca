"""`retro-ops`: the command line. Pipeline commands go through Dagster (same instance as the UI).

All state lives under RETRO_OPS_HOME (default ./.retro_ops). Every reporting command takes
--json; long work draws progress bars on stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from retro_ops.errors import RetroOpsError
from retro_ops.settings import Settings

app = typer.Typer(
    name="retro-ops", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Manage RETRO data and models together: corpora -> chunks -> embeddings -> indices -> "
         "models, with lineage. State lives under $RETRO_OPS_HOME (default ./.retro_ops).",
)
corpus_app = typer.Typer(no_args_is_help=True, help="Register and list corpora.")
app.add_typer(corpus_app, name="corpus")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _settings() -> Settings:
    settings = Settings.from_env()
    settings.ensure_dirs()
    return settings


def _catalog(settings: Settings):
    from retro_ops.catalog import Catalog

    return Catalog.open(settings.catalog_url)


def _emit_json(data) -> None:
    out.print_json(json.dumps(data, default=str))


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@corpus_app.command("add")
def corpus_add(
    name: Annotated[str, typer.Argument(help="A short name, e.g. `wiki`; becomes a Dagster partition.")],
    path: Annotated[str, typer.Argument(help="A folder, a glob (quote it) or one file of "
                                             ".txt/.md/.rst/.jsonl/.parquet.")],
    json_out: JsonOpt = False,
) -> None:
    """Register a corpus (its files are read when it is materialized)."""
    from assets.launch import dagster_instance, ensure_corpus_partition
    from retro_ops.corpus import resolve_files

    try:
        files = resolve_files(path)
        source = os.path.abspath(os.path.expanduser(path))  # globs stay globs, made absolute
        info = _catalog(settings := _settings()).add_corpus(name, source)
    except RetroOpsError as exc:
        _fail(str(exc))
    ensure_corpus_partition(dagster_instance(settings), name)
    if json_out:
        _emit_json({"name": info.name, "source_uri": info.source_uri, "files": len(files)})
    else:
        out.print(f"corpus [bold]{name}[/bold]: {len(files)} files at {info.source_uri}\n"
                  f"next: retro-ops materialize --corpus {name}")


@corpus_app.command("list")
def corpus_list(json_out: JsonOpt = False) -> None:
    """List corpora with their latest version."""
    corpora = _catalog(_settings()).list_corpora()
    if json_out:
        _emit_json([asdict(c) for c in corpora])
        return
    table = Table("name", "documents", "versions", "latest digest", "source")
    for c in corpora:
        table.add_row(c.name, str(c.n_documents if c.n_documents is not None else "-"),
                      str(c.n_versions), (c.latest_digest or "-")[:12], c.source_uri)
    out.print(table if corpora else "no corpora yet: retro-ops corpus add NAME PATH")


def _run_materializations(corpora: list[str], selection: list[str] | None, json_out: bool) -> list:
    """Materialize each corpus through Dagster with progress bars; returns the outcomes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from assets.launch import TerminalProgress, dagster_instance, materialize_corpus

    settings = _settings()
    instance = dagster_instance(settings)
    outcomes = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=json_out) as bar:
        for corpus in corpora:
            try:
                outcomes.append(materialize_corpus(instance, corpus, selection=selection,
                                                   progress=TerminalProgress().attach(bar)))
            except ValueError as exc:
                _fail(str(exc))
    return outcomes


def _print_outcomes(outcomes, json_out: bool) -> None:
    if json_out:
        _emit_json([asdict(o) for o in outcomes])
        return
    for o in outcomes:
        status = "[green]ok[/green]" if o.success else f"[red]failed[/red]: {o.error}"
        out.print(f"\n[bold]{o.corpus}[/bold] run {o.run_id[:8]} {status}")
        table = Table("asset", "rows", "new", "rate", "LanceDB version", "checks")
        for a in o.assets:
            md = a.metadata
            rows = md.get("chunks", md.get("documents", "-"))
            new = md.get("newly_embedded", md.get("new_chunks", md.get("new_documents", "-")))
            rate = (f"{md['chunks_per_second']:.1f} chunks/s" if "chunks_per_second" in md else
                    f"{md['tokens_per_second']:,.0f} tokens/s" if "tokens_per_second" in md else "")
            failed = [k for k, v in a.checks.items() if not v]
            checks = (f"FAILED: {', '.join(failed)}" if failed else
                      f"{len(a.checks)} passed" if a.checks else "-")
            table.add_row(a.asset, str(rows), str(new), rate, str(md.get("lancedb_version", "-")),
                          checks)
        out.print(table)
        issues = next((a.metadata.get("issue_list") for a in o.assets if a.asset == "documents"), "")
        if issues and issues != "none":
            out.print("[yellow]read issues[/yellow] (these inputs were skipped or repaired):")
            out.print(issues, markup=False, highlight=False)


@app.command()
def materialize(
    corpus: Annotated[Optional[list[str]], typer.Option(
        "--corpus", "-c", help="Corpus to materialize (repeatable); default: every corpus.")] = None,
    select: Annotated[Optional[str], typer.Option(
        help="Comma-separated assets: documents, chunks, chunk_embeddings (default: all).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Materialize feature assets through Dagster (the run shows in the UI)."""
    try:
        known = [c.name for c in _catalog(_settings()).list_corpora()]
    except RetroOpsError as exc:
        _fail(str(exc))
    names = corpus or known
    missing = [c for c in names if c not in known]
    if missing or not names:
        _fail(f"unknown corpus {', '.join(missing)} (known: {', '.join(known) or 'none'}); "
              "add one with `retro-ops corpus add NAME PATH`" if missing else
              "no corpora yet: add one with `retro-ops corpus add NAME PATH`")
    selection = [s.strip() for s in select.split(",") if s.strip()] if select else None
    outcomes = _run_materializations(names, selection, json_out)
    _print_outcomes(outcomes, json_out)
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


@app.command()
def demo(json_out: JsonOpt = False) -> None:
    """Run everything on the embedded default corpora, then say where to look."""
    from assets.launch import dagster_instance, ensure_corpus_partition
    from retro_ops.default_corpora import DEFAULT_CORPORA

    settings = _settings()
    catalog = _catalog(settings)
    instance = dagster_instance(settings)
    for name, (location, _purpose) in DEFAULT_CORPORA.items():
        catalog.add_corpus(name, str(location))
        ensure_corpus_partition(instance, name)
    outcomes = _run_materializations(list(DEFAULT_CORPORA), None, json_out)
    _print_outcomes(outcomes, json_out)
    if not json_out:
        out.print(
            f"\n[bold]Built under {settings.home}[/bold]\n"
            f"  catalog:   {settings.catalog_url}\n"
            f"  LanceDB:   {settings.lancedb_uri}\n"
            f"  Dagster:   {settings.dagster_home}\n"
            "See the asset graph, runs, metadata and checks in the Dagster UI:\n"
            "  .venv/bin/retro-ops ui      then open http://127.0.0.1:3000\n"
            "List corpora:  .venv/bin/retro-ops corpus list"
        )
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the Dagster webserver.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
) -> None:
    """Start the Dagster UI (`dagster dev`) on this home's instance."""
    from assets.launch import dagster_instance

    settings = _settings()
    dagster_instance(settings)  # writes dagster.yaml on first use
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home),
           "RETRO_OPS_HOME": str(settings.home)}
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host,
               "-p", str(port)]
    err.print(f"Dagster UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(command, env=env, cwd=workspace.parent))


if __name__ == "__main__":
    app()
