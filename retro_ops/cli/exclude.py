"""`retro-ops exclude ...`: audited exclusions of chunks, texts and documents, effective at once."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from retro_ops.cli.common import (
    ActorOpt, JsonOpt, audit_db, emit_json, excluded_note, fail, open_catalog, out, reader, set_option, settings,
)
from retro_ops.cli.reports import print_report
from retro_ops.errors import RetroOpsError

exclude_app = typer.Typer(no_args_is_help=True, help=(
    "Exclude chunks, texts or documents from every retrieval, at once (no rebuild needed). "
    "Every exclusion and revoke is audited: `retro-ops exclude list`."))

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail).")]


def _record(scope: str, targets: list[str], reason: str, actor: str, json_out: bool) -> None:
    from retro_ops.catalog.exclusions import NewExclusion

    try:
        ids = open_catalog().record_exclusions(
            [NewExclusion(scope, t, reason) for t in targets], actor=reader(actor))
    except RetroOpsError as exc:
        fail(str(exc))
    _recorded(scope, targets, ids, json_out)


def _recorded(scope: str, targets: list[str], ids: list[int], json_out: bool) -> None:
    if json_out:
        emit_json({"scope": scope, "targets": targets, "exclusion_ids": ids})
    else:
        for target, exclusion_id in zip(targets, ids):
            out.print(f"exclusion {exclusion_id}: {scope} {target}")


@exclude_app.command("chunk")
def exclude_chunk(chunk_id: Annotated[int, typer.Argument(help="A chunk id.")], reason: ReasonOpt,
                  actor: ActorOpt = "", json_out: JsonOpt = False) -> None:
    """Exclude one chunk."""
    from retro_ops.features.store import FeatureStore
    from retro_ops.governance.exclude import exclude_chunk as exclude

    resolved = settings()
    try:
        exclusion_id = exclude(open_catalog(resolved), FeatureStore(resolved.lancedb_uri), chunk_id,
                               reason=reason, actor=reader(actor))
    except RetroOpsError as exc:
        fail(str(exc))
    _recorded("chunk", [str(chunk_id)], [exclusion_id], json_out)


@exclude_app.command("text")
def exclude_text(text: Annotated[str, typer.Argument(help="A chunk's exact text.")],
                 reason: ReasonOpt = "excluded text", actor: ActorOpt = "",
                 json_out: JsonOpt = False) -> None:
    """Exclude a text by its content hash: every chunk with it, in every document, now and later."""
    from retro_ops.governance.exclude import exclude_text as exclude

    try:
        digest, exclusion_id = exclude(open_catalog(), text, reason=reason, actor=reader(actor))
    except RetroOpsError as exc:
        fail(str(exc))
    _recorded("content_hash", [digest], [exclusion_id], json_out)


@exclude_app.command("doc")
def exclude_doc(path_or_id: Annotated[str, typer.Argument(help="A doc id or a recorded source path.")],
                reason: ReasonOpt, actor: ActorOpt = "",
                purge: Annotated[bool, typer.Option("--purge", help=(
                    "Also erase the text from every store under the home (LanceDB tables and old "
                    "versions, index builds, neighbour caches), rebuild the sets that held it, and "
                    "refuse the document at every later materialization. Irreversible."))] = False,
                json_out: JsonOpt = False) -> None:
    """Take down a whole document (every document read from that path); --purge erases it."""
    from retro_ops.lineage.audit import resolve_documents

    try:
        with audit_db() as db:
            doc_ids = resolve_documents(db, path_or_id)
    except RetroOpsError as exc:
        fail(str(exc))
    if purge:
        _purge(doc_ids, reason, actor, json_out)
    else:
        _record("document", doc_ids, reason, actor, json_out)


def _purge(doc_ids: list[str], reason: str, actor: str, json_out: bool) -> None:
    from retro_ops.erasure.purge import purge_documents
    from retro_ops.workspace import Workspace

    try:
        report = purge_documents(Workspace.open(settings()), doc_ids, reason=reason, actor=reader(actor))
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(asdict(report))
        return
    for p in report.purges:
        out.print(f"purge {p['id']}: document {p['doc_id']} {p['status']}")
    out.print(f"rows deleted: {report.rows_deleted}; texts erased {report.orphan_hashes}, "
              f"kept (another document has them) {report.shared_hashes}")
    for s in report.sets_rebuilt:
        out.print(f"retrieval set {s['retrieval_set']}: " + (s["error"] if "error" in s else
                  f"version {s['version_id']}, index build {s['index_build_id']}"))
    out.print(f"index builds removed: {len(report.index_builds_removed)}; neighbour caches removed: "
              f"{len(report.neighbour_caches_removed)}; old versions removed: {report.versions_removed}")
    for snap in report.snapshots_lost:
        out.print(f"[yellow]LanceDB tag {snap['tag']} of {snap['table']} (version {snap['version']}) "
                  "removed: that snapshot is no longer reproducible[/yellow]")
    for m in report.models_affected:
        out.print(f"[yellow]{m['model']}[/yellow] read it as {', '.join(m['read_as'])}: no longer "
                  "reproducible, may need retraining")
    for path in report.corpus_files_left:
        out.print(f"[yellow]still in a corpus folder (not deleted, it is yours): {path}[/yellow]")


@exclude_app.command("apply")
def exclude_apply(
    policy: Annotated[Path, typer.Option("--policy", help="Policy file (TOML: scorers, thresholds, scopes).")],
    set_name: Annotated[str, set_option("Its latest version's chunks are scored.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print counts and a sample; change nothing.")] = False,
    actor: ActorOpt = "", json_out: JsonOpt = False,
) -> None:
    """Score a retrieval set's chunks and exclude what the policy says."""
    from retro_ops.features.store import FeatureStore
    from retro_ops.governance.policy import apply_policy, load_policy

    resolved = settings()
    try:
        report = apply_policy(open_catalog(resolved), FeatureStore(resolved.lancedb_uri),
                              load_policy(policy), set_name, actor=reader(actor), dry_run=dry_run)
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(asdict(report))
        return
    verb = "would exclude" if dry_run else "excluded"
    out.print(f"policy {report.policy} on {set_name} (version {report.set_version_id}): "
              f"{report.texts} texts; scored now {report.newly_scored}; matches {report.matches}; "
              f"{verb} {report.new_exclusions} (already excluded: {report.already_excluded})")
    for row in report.sample:
        shown = repr(row["text"]) if row["text"] is not None else excluded_note(row["excluded"])
        out.print(f"  {row['scope']} {row['target']} {row['scorer']}={row['score']}: {shown}",
                  highlight=False)


@exclude_app.command("list")
def exclude_list(active: Annotated[bool, typer.Option("--active", help="Only exclusions in force.")] = False,
                 json_out: JsonOpt = False) -> None:
    """Every exclusion with its audit trail (revoked ones too, unless --active)."""
    rows = [r.as_dict() for r in open_catalog().list_exclusions(include_revoked=not active)]
    if json_out:
        emit_json(rows)
        return
    table = Table("id", "scope", "target", "reason", "policy", "scorer", "score", "by", "at", "revoked")
    for r in rows:
        table.add_row(str(r["id"]), r["scope"], r["target"], r["reason"], r["policy"], r["scorer"] or "",
                      "" if r["score"] is None else f"{r['score']:.3f}", r["created_by"],
                      str(r["created_at"])[:19],
                      f"{str(r['revoked_at'])[:19]} by {r['revoked_by']}: {r['revoke_reason']}"
                      if r["revoked_at"] else "")
    out.print(table if rows else "no exclusions")


@exclude_app.command("revoke")
def exclude_revoke(exclusion_id: Annotated[int, typer.Argument(help="An exclusion id (see `exclude list`).")],
                   reason: ReasonOpt, actor: ActorOpt = "", json_out: JsonOpt = False) -> None:
    """Bring excluded text back, with an audited reason (the exclusion row is kept)."""
    try:
        record = open_catalog().revoke_exclusion(exclusion_id, reason=reason, actor=reader(actor))
    except RetroOpsError as exc:
        fail(str(exc))
    if json_out:
        emit_json(record.as_dict())
    else:
        out.print(f"exclusion {record.id} ({record.scope} {record.target}) revoked by {record.revoked_by}")


@exclude_app.command("report")
def exclude_report(exclusion_id: Annotated[int, typer.Argument(help="An exclusion id (see `exclude list`).")],
                   json_out: JsonOpt = False) -> None:
    """What one exclusion covers: its chunks, the set versions, indices and deployments that held
    them before, the models that read them as text or as neighbours (may need retraining), and
    the logged generations that retrieved them."""
    from retro_ops.lineage.audit import exclusion_report, with_generations

    try:
        with audit_db() as db:
            found = with_generations(db, exclusion_report(db, exclusion_id))
    except RetroOpsError as exc:
        fail(str(exc))
    print_report(f"exclusion {exclusion_id}", found.summary, found.lists, json_out, None)
