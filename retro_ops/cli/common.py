"""What every command shares: consoles, settings, JSON output, one-line errors."""

from __future__ import annotations

import json
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from retro_ops.settings import Settings

out = Console(soft_wrap=True)  # results (stdout)
err = Console(stderr=True, soft_wrap=True)  # progress and errors (stderr)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def settings() -> Settings:
    resolved = Settings.from_env()
    resolved.ensure_dirs()
    return resolved


def open_catalog(resolved: Settings | None = None):
    from retro_ops.catalog import Catalog

    return Catalog.open((resolved or settings()).catalog_url)


def emit_json(data) -> None:
    out.print_json(json.dumps(data, default=str))


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)
