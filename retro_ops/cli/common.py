"""What every command shares: consoles, settings, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from retro_ops.settings import Settings

if TYPE_CHECKING:
    from retro_ops.lineage.limits import AuditLimits
    from retro_ops.lineage.views import AuditDB

PIPED_WIDTH = 160  # tables written to a file or a pipe: wide enough that no cell is cut to "…"


def console(stderr: bool = False) -> Console:
    """A console that wraps to the terminal, or to PIPED_WIDTH when its stream is not one
    (rich would otherwise assume 80 columns and cut model names in a piped demo log); an
    explicit COLUMNS still wins."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, soft_wrap=True, width=width)


def file_console(file) -> Console:
    """Tables for a text file: plain (no colour codes), as wide as a piped console."""
    return Console(file=file, width=PIPED_WIDTH, no_color=True, force_terminal=False, soft_wrap=True)


out = console()  # results (stdout)
err = console(stderr=True)  # progress and errors (stderr)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
IncludeExcludedOpt = Annotated[bool, typer.Option("--include-excluded", help=(
    "Also show the text of excluded chunks (for an auditor): each one shown is recorded in the "
    "exclusion log as a read, with --actor, before it is printed."))]
ActorOpt = Annotated[str, typer.Option("--actor", help="Who decides or reads (default: the login name).")]

# One spelling for one noun on every command: `--set/-s` for a retrieval set (`--retrieval-set`
# is its alias), `--corpus/-c` for a corpus, `--model/-m` for a model reference.
SET_NAMES = ("--set", "--retrieval-set", "-s")
SET_HELP = "Retrieval set: a named, versioned selection of chunks (see `retro-ops retrieval-set list`)."
CORPUS_NAMES = ("--corpus", "-c")
CORPUS_HELP = "Corpus: a named source of documents (see `retro-ops corpus list`)."
MODEL_HELP = ("Model: NAME/VERSION (e.g. retro-ops-retro/1), model-ID, or retro|baseline|retrofit "
              "for the newest of that kind (see `retro-ops models list`).")


def set_option(purpose: str, *, repeatable: bool = False) -> typer.models.OptionInfo:
    """`--set NAME`, with the shared help plus what this command does with the set."""
    return typer.Option(*SET_NAMES, help=f"{SET_HELP} {purpose}{' Repeatable.' if repeatable else ''}")


def corpus_option(purpose: str, *, repeatable: bool = False) -> typer.models.OptionInfo:
    return typer.Option(*CORPUS_NAMES, help=f"{CORPUS_HELP} {purpose}{' Repeatable.' if repeatable else ''}")


ModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]


@dataclass(frozen=True)
class Invocation:
    """Who runs a command, handed in as the context object (`command.main(obj=Invocation(...))`):
    what its Dagster runs are tagged `retro_ops/launched_by` with."""

    launched_by: str = "cli"  # "cli-worker": served by a local worker (`retro-ops worker`)


def invocation(ctx: typer.Context) -> Invocation:
    """The command's Invocation: the one a worker handed in, else the default."""
    return ctx.find_object(Invocation) or Invocation()


def settings() -> Settings:
    resolved = Settings.from_env()
    resolved.ensure_dirs()
    return resolved


def open_catalog(resolved: Settings | None = None):
    from retro_ops.catalog import Catalog

    resolved = resolved or settings()
    return Catalog.open(resolved.catalog_url, home=resolved.home)


def open_workspace(resolved: Settings | None = None):
    """The home's stores with the embedder (torch and the weights: seconds; a command that only
    reads the catalog opens that alone)."""
    from retro_ops.workspace import Workspace

    return Workspace.open(resolved or settings())


def audit_db(limits: AuditLimits | None = None) -> AuditDB:
    """The audit views (DuckDB over the catalog and the feature store) of the home, within
    `limits` (an `AuditLimits`; None: its defaults)."""
    from retro_ops.features.store import FeatureStore
    from retro_ops.lineage.limits import AuditLimits
    from retro_ops.lineage.views import AuditDB

    resolved = settings()
    return AuditDB(open_catalog(resolved), FeatureStore(resolved.lancedb_uri), limits or AuditLimits())


def reader(actor: str) -> str:
    """Who the exclusion log records: --actor, else the login name."""
    import getpass

    return actor or getpass.getuser()


def excluded_note(excluded: dict) -> str:
    """An excluded chunk's place on screen: the exclusion that covers it, never its text."""
    detail = ", ".join(f"{excluded[k]}" for k in ("scope", "policy") if excluded.get(k))
    reason = f": {excluded['reason']}" if excluded.get("reason") else ""
    return f"excluded by exclusion {excluded['exclusion_id']}" + (f" ({detail}{reason})" if detail else "")


def emit_json(data) -> None:
    out.print_json(json.dumps(data, default=str))


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)
