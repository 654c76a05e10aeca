"""`retro-ops retrieval-set ...` and `retro-ops retrieve`: define sets, ask them for neighbours."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from retro_ops.cli.common import (
    JsonOpt, corpus_option, emit_json, excluded_note, fail, open_catalog, out, set_option, settings,
)
from retro_ops.errors import RetroOpsError

retrieval_set_app = typer.Typer(no_args_is_help=True, help="Define and list retrieval sets.")


@retrieval_set_app.command("create")
def retrieval_set_create(
    name: Annotated[str, typer.Argument(help="Name of the set; becomes a Dagster partition.")],
    corpus: Annotated[list[str], corpus_option("Its chunks are members of the set.", repeatable=True)],
    description: Annotated[str, typer.Option(help="What the set is for.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Define a retrieval set: the chunks of these corpora, minus excluded chunks."""
    from assets.instance import dagster_instance, ensure_partition
    from assets.partitions import RETRIEVAL_SET_PARTITIONS

    resolved = settings()
    try:
        info = open_catalog(resolved).create_retrieval_set(name, corpus, description)
    except RetroOpsError as exc:
        fail(str(exc))
    ensure_partition(dagster_instance(resolved), RETRIEVAL_SET_PARTITIONS, name)
    if json_out:
        emit_json(asdict(info))
    else:
        out.print(f"retrieval set [bold]{name}[/bold] over {', '.join(info.corpora)}\n"
                  f"next: retro-ops materialize --set {name}")


def _current_index(name: str) -> dict | None:
    from retro_ops.retrieval.index.publish import current_build, index_root, read_manifest

    root = index_root(settings().indices_dir, name)
    found = current_build(root)
    return asdict(read_manifest(root, found[0])) if found else None


@retrieval_set_app.command("list")
def retrieval_set_list(json_out: JsonOpt = False) -> None:
    """List retrieval sets, their latest version and the index currently published."""
    sets = open_catalog().list_retrieval_sets()
    rows = [{**asdict(s), "index": _current_index(s.name)} for s in sets]
    if json_out:
        emit_json(rows)
        return
    table = Table("name", "corpora", "versions", "chunks", "current index")
    for r in rows:
        index = r["index"]
        table.add_row(r["name"], ", ".join(r["corpora"]), str(r["n_versions"]),
                      str(r["n_chunks"] if r["n_chunks"] is not None else "-"),
                      f"{index['factory']} ntotal={index['ntotal']} sha256={index['sha256'][:12]}"
                      if index else "none yet")
    out.print(table if rows else "no retrieval sets yet: retro-ops retrieval-set create NAME --corpus C")


def retrieve(
    text: Annotated[str, typer.Argument(help="The query text (embedded exactly like the chunks).")],
    set_name: Annotated[str, set_option("Its published index is searched.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many neighbours.")] = 5,
    nprobe: Annotated[int | None, typer.Option(min=1, help="IVF lists to probe (default: the manifest's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Nearest chunks of a text, with their continuation and source. Excluded chunks are never
    retrieved; a continuation excluded since the set was built shows as its id and exclusion."""
    from retro_ops.features.embedder import Embedder
    from retro_ops.features.store import FeatureStore
    from retro_ops.retrieval.retriever import Retriever

    resolved = settings()
    catalog = open_catalog(resolved)
    try:
        catalog.get_retrieval_set(set_name)
        retriever = Retriever.open(catalog, FeatureStore(resolved.lancedb_uri),
                                   Embedder(resolved.embedder_path or None), resolved.indices_dir,
                                   set_name, search_params={"nprobe": nprobe} if nprobe else None)
    except RetroOpsError as exc:
        fail(str(exc))
    if not text.strip():
        fail("empty query: give some text to search for")
    try:
        [neighbours] = retriever.retrieve([text], k=k)
    except RetroOpsError as exc:  # an unreadable exclusion list: no answer rather than unfiltered
        fail(str(exc))
    rows = [{**n.as_dict(), "source": (catalog.document_sources(n.doc_id) or ["?"])[0]}
            for n in neighbours]
    if json_out:
        emit_json({"query": text, "retrieval_set": set_name,
                   "retrieval_set_version_id": retriever.version.id,
                   "index_sha256": retriever.manifest.sha256, "neighbours": rows})
        return
    table = Table("rank", "score", "source", "neighbour (chunk + [dim]continuation[/dim])")
    for r in rows:
        after = (f"[yellow](continuation: chunk {r['continuation_chunk_id']}, "
                 f"{excluded_note({'exclusion_id': r['continuation_excluded_by']})})[/yellow]"
                 if r["continuation_excluded_by"] is not None else f"[dim]{r['continuation_text']}[/dim]")
        table.add_row(str(r["rank"]), f"{r['score']:.3f}", Path(r["source"]).name, f"{r['text']} {after}")
    out.print(table)
