"""`retro-ops exclude doc ... --purge`: delete a document's text from every store under the home.

Order, and why it survives SIGKILL: (1) the intent is committed first, one `purged_documents`
row per document (its chunk ids and content hashes, the retrieval-set versions that held it,
hashes of its source paths) together with a document exclusion, so from that moment no query
returns it; (2) every later step is idempotent, and each purge call first finishes the purges
left pending, so a rerun after a kill ends as an uninterrupted run would. The steps: delete its
rows from every LanceDB table (`erasure.store`); record a new version of each corpus without
it (so training and set builds stop naming it); rebuild the retrieval-set versions and indices
that held it; remove index builds and neighbour caches that still hold its vectors or tokens;
remove every older LanceDB version of the tables it was in (compaction + cleanup; a tag pinning
one is removed and its snapshot recorded as no longer reproducible); replace its
source paths in the catalog (and in MLflow lineage artifacts) by hashes and VACUUM the SQLite
catalog; mark the purge done with a report (counts and ids, never text or paths).

Not erased, by decision: checkpoint weights and their MLflow pyfunc packages (trained on the
text, but they do not hold it; the models are reported as needing retraining and `lineage verify`
names the purge), `model_reads` (ids only: who read what), and corpus files outside the home
(the owner's; reported so they can be removed).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from lancedb.expr import col
from sqlalchemy import select

from retro_ops.catalog import Catalog
from retro_ops.catalog import tables as m
from retro_ops.catalog.purges import PurgeRecord
from retro_ops.catalog.store import corpus_root
from retro_ops.durable import file_lock, write_atomic
from retro_ops.erasure.store import erase_documents, snapshot_document, text_tables
from retro_ops.errors import CrashMode, ExclusionError, IndexIntegrityError, RetroOpsError, SimulatedCrash
from retro_ops.features.spaces import EmbeddingSpace
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import DOCUMENTS
from retro_ops.retrieval.index.publish import LOCK_FILE, current_build, index_root, read_manifest
from retro_ops.retrieval.index.build import IndexConfig
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.sets import build_retrieval_set_version
from retro_ops.workspace import Workspace

CRASH_POINTS = ("after_intent", "after_deletes", "after_rebuild", "after_cleanup")
READS_TABLE = "model_reads"


@dataclass
class PurgeReport:
    purges: list[dict] = field(default_factory=list)  # id, doc_id, status
    rows_deleted: dict[str, int] = field(default_factory=dict)
    orphan_hashes: int = 0
    shared_hashes: int = 0
    corpus_versions: list[int] = field(default_factory=list)  # new versions without the documents
    sets_rebuilt: list[dict] = field(default_factory=list)
    index_builds_removed: list[str] = field(default_factory=list)
    neighbour_caches_removed: list[str] = field(default_factory=list)
    versions_removed: dict[str, int] = field(default_factory=dict)
    # LanceDB tags removed (a tag pins its version's files): table, tag, version; the snapshot each
    # pinned is gone with them, no longer reproducible
    snapshots_lost: list[dict] = field(default_factory=list)
    sources_scrubbed: int = 0
    lineage_artifacts_scrubbed: int = 0
    models_affected: list[dict] = field(default_factory=list)  # model, how: may need retraining
    corpus_files_left: list[str] = field(default_factory=list)  # still holding it, not ours to delete

    def recorded(self) -> dict:
        """What the catalog keeps: counts and ids, no path."""
        return {k: v for k, v in asdict(self).items() if k not in ("corpus_files_left", "purges")}


def models_affected(catalog: Catalog, store: FeatureStore, purge: PurgeRecord) -> list[dict]:
    """Models whose recorded inputs held the purged document: read as training text, read as a
    neighbour, or trained against a retrieval-set version that held it."""
    how: dict[int, set[str]] = {}
    with catalog.session() as s:
        for model_id in s.scalars(select(m.ModelTrainingDocument.model_id)
                                  .where(m.ModelTrainingDocument.doc_id == purge.doc_id)):
            how.setdefault(model_id, set()).add("text")
        digests = list(purge.held_by)
        for model_id in s.scalars(select(m.ModelRecord.id).join(
                m.RetrievalSetVersion, m.RetrievalSetVersion.id == m.ModelRecord.retrieval_set_version_id)
                .where(m.RetrievalSetVersion.digest.in_(digests))) if digests else []:
            how.setdefault(model_id, set()).add("retrieval set")
        refs = {r.id: (f"{r.mlflow_model_name}/{r.mlflow_model_version}"
                       if r.mlflow_model_name and r.mlflow_model_version else f"model-{r.id}")
                for r in s.scalars(select(m.ModelRecord))}
    if purge.chunk_ids and READS_TABLE in store.db.list_tables().tables:
        reads = (store.db.open_table(READS_TABLE).search()
                 .where(col("chunk_id").isin(purge.chunk_ids).to_sql())
                 .select(["model_id", "role"]).limit(None).to_arrow())
        for model_id, role in zip(reads.column("model_id").to_pylist(), reads.column("role").to_pylist()):
            how.setdefault(int(model_id), set()).add("text" if role == "train" else "neighbour")
    return [{"model": refs.get(i, f"model-{i}"), "model_id": i, "read_as": sorted(how[i]),
             "purge_id": purge.id, "doc_id": purge.doc_id} for i in sorted(how)]


def _space(catalog: Catalog, space_id: str) -> EmbeddingSpace:
    """The embedding space as recorded (no need to load the embedder to rebuild a set)."""
    with catalog.session() as s:
        row = s.get(m.EmbeddingSpaceRow, space_id)
        return EmbeddingSpace(row.id, row.model_name, row.model_path, row.weights_digest, row.pooling,
                              row.normalize, row.dim, row.max_tokens)


def _current_manifest(root: Path):
    try:
        found = current_build(root)
        return read_manifest(root, found[0]) if found else None
    except IndexIntegrityError:
        return None


def _rebuild_sets(ws: Workspace, held: set[str]) -> list[dict]:
    """New versions and indices of every set whose latest version or published index held it."""
    rebuilt = []
    for info in ws.catalog.list_retrieval_sets():
        if info.latest_version_id is None:
            continue
        latest = ws.catalog.latest_retrieval_set_version(info.name)
        root = index_root(ws.settings.indices_dir, info.name)
        current = _current_manifest(root)
        if latest.digest not in held and (current is None or current.retrieval_set_digest not in held):
            continue
        space = _space(ws.catalog, latest.embedding_space_id)
        # the rebuild uses the config the serving index was built with: its kind stays, and the
        # same build key lets the cheap route (remove the purged ids) apply
        config = IndexConfig(**current.config) if current is not None and current.config else IndexConfig()
        try:
            version = build_retrieval_set_version(ws.catalog, ws.store, info.name, space).version
            built = index_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, info.name, space.dim,
                                        config=config)
        except RetroOpsError as exc:  # e.g. the set held nothing else: no index can serve it
            rebuilt.append({"retrieval_set": info.name, "error": str(exc)})
            continue
        rebuilt.append({"retrieval_set": info.name, "version_id": version.id,
                        "index_build_id": built.build_id, "published": built.published is not None})
    return rebuilt


def _remove_index_builds(ws: Workspace, held: set[str]) -> list[str]:
    """Delete every build folder of a set version that held the text, unless it is still current."""
    with ws.catalog.session() as s:
        dirs = s.scalars(select(m.IndexBuild.build_dir).join(
            m.RetrievalSetVersion, m.RetrievalSetVersion.id == m.IndexBuild.retrieval_set_version_id)
            .where(m.RetrievalSetVersion.digest.in_(sorted(held)), m.IndexBuild.build_dir != "")).all()
    removed = []
    for stored in sorted(set(dirs)):
        path = Path(ws.catalog.resolved_path(stored))
        if not path.is_dir():
            continue
        with file_lock(path.parent / LOCK_FILE):  # the publishers' lock of that set's folder
            try:
                current = current_build(path.parent)
            except IndexIntegrityError:  # a torn pointer loads nothing: no build is current
                current = None
            if current and current[0] == path.name:
                continue  # the rebuild failed: the set keeps serving (filtered) until fixed
            shutil.rmtree(path)
            removed.append(str(path.relative_to(ws.settings.home)))
    return removed


def _remove_neighbour_caches(folder: Path, chunk_ids: set[int]) -> list[str]:
    """Cached training neighbours hold their values' tokens: a cache naming a purged chunk goes
    (it is re-derived, without it, the next time it is needed)."""
    removed = []
    wanted = np.fromiter(chunk_ids, dtype=np.int64)
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        with np.load(path, allow_pickle=False) as data:
            hit = any(np.isin(data[k], wanted).any() for k in ("ids", "chunk_ids") if k in data.files)
        if hit:
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink()
            removed.append(path.name)
    return removed


def _scrub_lineage_artifacts(mlflow_dir: Path, doc_ids: set[str]) -> int:
    """`lineage/documents.csv` in MLflow runs lists each document's source paths: a purged
    document's row keeps its id and counts, its paths become `purged`."""
    changed = 0
    for path in sorted(mlflow_dir.rglob("documents.csv")) if mlflow_dir.is_dir() else []:
        lines = path.read_text().splitlines()
        # doc_id,"sources",bytes,chunks,role: the last three fields never hold a comma
        fixed = [f'{line.split(",", 1)[0]},"purged",{",".join(line.rsplit(",", 3)[-3:])}'
                 if line.split(",", 1)[0] in doc_ids else line for line in lines]
        if fixed != lines:
            write_atomic(path, ("\n".join(fixed) + "\n").encode())
            changed += 1
    return changed


def _corpus_files(catalog: Catalog, uris: list[str]) -> list[str]:
    """Source files that still exist (the owner's to remove: a purge never deletes corpus files)."""
    found = set()
    for corpus in catalog.list_corpora():
        root = Path(corpus_root(corpus.source_uri))
        for uri in uris:
            path = root / uri.split("#", 1)[0]
            if not uri.startswith("purged:") and path.is_file():
                found.add(str(path))
    return sorted(found)


def purge_documents(ws: Workspace, doc_ids: list[str], *, reason: str, actor: str,
                    crash_at: str | None = None, crash_mode: CrashMode = "raise") -> PurgeReport:
    """Purge `doc_ids` (and finish any purge left pending); returns what was done. A purge is
    irreversible, so it needs a reason, checked before anything is read or recorded."""
    if not reason.strip():
        named = ", ".join(doc_ids[:3]) + (f" and {len(doc_ids) - 3} more" if len(doc_ids) > 3 else "")
        raise ExclusionError(f"a purge needs a reason (none given for {named or 'the pending purges'})")
    catalog, store, report = ws.catalog, ws.store, PurgeReport()
    files: list[str] = []
    for doc_id in doc_ids:
        if catalog.purged_documents().get(doc_id) is None:
            snap = snapshot_document(catalog, store, doc_id)
            files += _corpus_files(catalog, snap.source_uris)
            catalog.begin_purge(doc_id, reason=reason, actor=actor, source_uris=snap.source_uris,
                                chunks=snap.chunks, held_by=snap.held_by)
    _crash("after_intent", crash_at, crash_mode)
    pending = catalog.purges(status="pending")
    if not pending:
        report.purges = [{"id": p.id, "doc_id": p.doc_id, "status": p.status}
                         for p in catalog.purges() if p.doc_id in doc_ids]
        return report
    purged_ids = [p.doc_id for p in pending]
    hashes = sorted({h for p in pending for h in p.content_hashes})
    erased = erase_documents(store, purged_ids, hashes)
    report.rows_deleted, report.orphan_hashes, report.shared_hashes = (
        erased.rows_deleted, erased.orphan_hashes, erased.shared_hashes)
    report.corpus_versions = catalog.drop_from_latest_corpus_versions(
        purged_ids, documents_lance_version=store.version(DOCUMENTS))
    _crash("after_deletes", crash_at, crash_mode)
    held = {d for p in pending for d in p.held_by}
    report.sets_rebuilt = _rebuild_sets(ws, held)
    _crash("after_rebuild", crash_at, crash_mode)
    report.index_builds_removed = _remove_index_builds(ws, held)
    report.neighbour_caches_removed = _remove_neighbour_caches(
        ws.settings.neighbours_dir, {c for p in pending for c in p.chunk_ids})
    # the tags go with the old versions: what they pinned is recorded first, so a killed purge's
    # rerun (which finds them gone) still reports them
    tagged = [{"table": name, "tag": tag, "version": version}
              for name in text_tables(store) for tag, version in sorted(store.tags(name).items())]
    report.snapshots_lost = catalog.record_lost_snapshots([p.id for p in pending], tagged)
    report.versions_removed = {name: store.erase_old_versions(name) for name in text_tables(store)}
    _crash("after_cleanup", crash_at, crash_mode)
    report.sources_scrubbed = catalog.scrub_document_sources(purged_ids)
    report.lineage_artifacts_scrubbed = _scrub_lineage_artifacts(ws.settings.mlflow_dir, set(purged_ids))
    for p in pending:
        report.models_affected += models_affected(catalog, store, p)
    report.corpus_files_left = files
    for p in pending:
        done = catalog.finish_purge(p.id, report.recorded())
        report.purges.append({"id": done.id, "doc_id": done.doc_id, "status": done.status})
    catalog.compact_storage()
    return report


def _crash(where: str, crash_at: str | None, mode: CrashMode) -> None:
    if crash_at == where:
        SimulatedCrash.at(f"purge {where}", mode)
