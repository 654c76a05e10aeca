"""`retro-ops corpus ...`: register and list corpora."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from retro_ops.cli.common import JsonOpt, emit_json, fail, open_catalog, out, settings
from retro_ops.errors import RetroOpsError

corpus_app = typer.Typer(no_args_is_help=True, help="Register and list corpora.")


@corpus_app.command("add")
def corpus_add(
    name: Annotated[str, typer.Argument(help="A short name, e.g. `wiki`; becomes a Dagster partition.")],
    path: Annotated[str, typer.Argument(help="A folder, a glob (quote it) or one file of "
                                             ".txt/.md/.rst/.jsonl/.parquet.")],
    json_out: JsonOpt = False,
) -> None:
    """Register a corpus (its files are read when it is materialized)."""
    from assets.instance import dagster_instance, ensure_corpus_partition
    from retro_ops.corpus import resolve_files

    resolved = settings()
    try:
        files = resolve_files(path)
        source = os.path.abspath(os.path.expanduser(path))  # globs stay globs, made absolute
        info = open_catalog(resolved).add_corpus(name, source)
    except RetroOpsError as exc:
        fail(str(exc))
    ensure_corpus_partition(dagster_instance(resolved), name)
    if json_out:
        emit_json({"name": info.name, "source_uri": info.source_uri, "files": len(files)})
    else:
        out.print(f"corpus [bold]{name}[/bold]: {len(files)} files at {info.source_uri}\n"
                  f"next: retro-ops materialize --corpus {name}")


@corpus_app.command("move")
def corpus_move(
    name: Annotated[str, typer.Argument(help="A registered corpus.")],
    path: Annotated[str, typer.Argument(help="Where its files are now (folder, glob or file).")],
    json_out: JsonOpt = False,
) -> None:
    """Point a corpus at its files' new place (after copying a home to another machine)."""
    from retro_ops.corpus import resolve_files

    try:
        files = resolve_files(path)
        info = open_catalog().move_corpus(name, os.path.abspath(os.path.expanduser(path)))
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json({"name": info.name, "source_uri": info.source_uri, "files": len(files)})
    else:
        out.print(f"corpus [bold]{name}[/bold]: {len(files)} files at {info.source_uri}\n"
                  f"next: retro-ops materialize --corpus {name} (known documents are not new)")


@corpus_app.command("list")
def corpus_list(json_out: JsonOpt = False) -> None:
    """List corpora with their latest version."""
    corpora = open_catalog().list_corpora()
    if json_out:
        emit_json([asdict(c) for c in corpora])
        return
    table = Table("name", "documents", "versions", "latest digest", "source")
    for c in corpora:
        table.add_row(c.name, str(c.n_documents if c.n_documents is not None else "-"),
                      str(c.n_versions), (c.latest_digest or "-")[:12], c.source_uri)
    out.print(table if corpora else "no corpora yet: retro-ops corpus add NAME PATH")
