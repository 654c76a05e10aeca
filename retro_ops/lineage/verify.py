"""`retro-ops lineage verify`: re-derive every digest a model's lineage records, from storage.

A lineage record is only as good as the bytes it points at. Each check reads the stored thing
again (each file of the checkpoint, the index file and its manifest, the LanceDB versions pinned
by the corpus version, the retrieval-set version and the model's reads, the corpus files) and
compares it with what the catalog recorded. Any mismatch is drift. What a record cannot check
(a model recorded before checkpoint manifests, a checkpoint's training-resume files) is named as
not covered: listed, not drift.

A purge (erasure) removes recorded inputs on purpose: each purge that erased something this model
read (as text, as a neighbour, or in its retrieval-set version) is a failed check naming the purge
("no longer reproducible"); what a purge removed (old LanceDB versions, index builds, source
files) is reported as removed by that purge rather than as unexplained drift, and passes for a
model none of whose inputs it erased.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select

from retro_ops.catalog import tables as m
from retro_ops.catalog.store import corpus_root
from retro_ops.catalog.purges import PurgeRecord
from retro_ops.corpus.readers import read_corpus
from retro_ops.erasure.purge import models_affected
from retro_ops.features.schemas import CHUNKS, DOCUMENTS, MEMBERS
from retro_ops.ids import document_id
from retro_ops.lineage.views import AuditDB
from retro_ops.retrieval.index.disk_refine import file_sha256
from retro_ops.retrieval.index.publish import INDEX_FILE, MANIFEST_FILE
from retro_ops.errors import RetroOpsError
from retro_ops.training.checkpoint import MODEL_FILES, OPTIMIZER_FILE, STATE_FILE, read_checkpoint
from retro_ops.training.verified import file_checks
from retro_ops.training.reads import read_model_reads, reads_digest


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str
    covered: bool = True  # False: the record cannot check it (named, not drift)


@dataclass
class VerifyReport:
    model: str
    checks: list[Check]

    @property
    def drift(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def not_covered(self) -> list[Check]:
        return [c for c in self.checks if not c.covered]

    def as_dict(self) -> dict:
        return {"model": self.model, "ok": not self.drift, "checks": [asdict(c) for c in self.checks],
                "not_covered": [c.what for c in self.not_covered]}


def _file_sha(path: Path) -> str | None:
    try:  # in blocks: a disk-refine vectors file is n x 1.5 kB
        return file_sha256(path)
    except OSError:
        return None


def _digest_check(what: str, path: Path, recorded: str | None) -> Check:
    actual = _file_sha(path)
    if actual is None:
        return Check(what, False, f"{path} is missing or unreadable")
    return Check(what, actual == recorded,
                 f"sha256 {actual[:16]}... {'matches' if actual == recorded else 'differs from'} "
                 f"the recorded {str(recorded)[:16]}...")


@dataclass(frozen=True)
class _Purges:
    """The purges of this catalog, and those that erased one of this model's inputs."""

    done: list[PurgeRecord]
    affecting: dict[int, list[str]]  # purge id -> how the model read the purged document

    def explain(self, table: str | None = None) -> tuple[bool, str] | None:
        """(ok, detail) for something a purge removed, or None when no purge could have."""
        cleaning = [p for p in self.done if table is None or (p.report or {}).get(
            "versions_removed", {}).get(table)]
        if not cleaning:
            return None
        ids = ", ".join(str(p.id) for p in cleaning)
        if self.affecting:
            return False, f"removed by purge {ids}; this model's inputs were purged: no longer reproducible"
        return True, f"removed by purge {ids}, which erased none of this model's inputs"


def _purges(db: AuditDB, model_id: int) -> _Purges:
    done = db.catalog.purges()
    affecting: dict[int, list[str]] = {}
    for purge in done:
        for hit in models_affected(db.catalog, db.store, purge):
            if hit["model_id"] == model_id:
                affecting[purge.id] = hit["read_as"]
    return _Purges(done, affecting)


def _purge_checks(purges: _Purges) -> list[Check]:
    by_id = {p.id: p for p in purges.done}
    return [Check(f"purge {pid} of document {by_id[pid].doc_id}", False,
                  f"purge {pid} ({by_id[pid].created_at:%Y-%m-%d}, by {by_id[pid].created_by}: "
                  f"{by_id[pid].reason}) erased a document this model read as {', '.join(how)}: "
                  "no longer reproducible, may need retraining")
            for pid, how in sorted(purges.affecting.items())]


def _lance_version_check(db: AuditDB, table: str, version: int, why: str,
                         purges: _Purges | None = None) -> Check:
    what = f"LanceDB {table} version {version} ({why})"
    if table not in set(db.store.db.list_tables().tables):
        return Check(what, False, f"table {table} is gone")
    present = {v.version if hasattr(v, "version") else v["version"]
               for v in db.store.db.open_table(table).list_versions()}
    if version in present:
        return Check(what, True, "present")
    explained = purges.explain(table) if purges else None
    if explained:
        return Check(what, *explained)
    return Check(what, False, "cleaned up (no longer in the table's versions)")


def _corpus_checks(db: AuditDB, corpus_version_id: int, purges: _Purges | None = None) -> list[Check]:
    """Each recorded source file of the version still exists and still yields its documents."""
    with db.catalog.session() as s:
        version = s.get(m.CorpusVersion, corpus_version_id)
        root = Path(corpus_root(db.catalog.resolved_path(version.corpus.source_uri)))
        sources = s.execute(select(m.CorpusVersionSource.source_uri, m.CorpusVersionSource.doc_id)
                            .where(m.CorpusVersionSource.corpus_version_id == corpus_version_id)).all()
    if not sources:
        return [Check(f"corpus version {corpus_version_id} files", False,
                      "no sources recorded for this version (recorded before migration 0006)")]
    purged = {p.doc_id for p in purges.done} if purges else set()
    expected: dict[str, set[str]] = {}
    notes = []
    for source, doc_id in sources:
        if doc_id in purged:  # its path was scrubbed; whether the file is still there is moot
            notes.append(f"document {doc_id} purged")
            continue
        expected.setdefault(source.split("#", 1)[0], set()).add(doc_id)
    bad = []
    for relative, doc_ids in sorted(expected.items()):
        path = root / relative
        if not path.is_file():
            bad.append(f"{relative}: missing")
            continue
        found = {document_id(raw.text) for raw in read_corpus(path)}
        if not doc_ids <= found:
            bad.append(f"{relative}: content changed ({len(doc_ids - found)} document(s) differ)")
    return [Check(f"corpus version {corpus_version_id} files ({len(expected)} under {root.name}/)",
                  not bad, "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
                  if bad else "every source still yields its recorded documents"
                  + (f" ({'; '.join(sorted(set(notes)))}: not checked)" if notes else ""))]


def _sidecar_checks(build_dir: Path) -> list[Check]:
    """The files a disk-refined index maps beside index.faiss (vectors.npy, ids.npy) against the
    sha256 its manifest records; the manifest itself was just checked against the catalog."""
    recorded = json.loads((build_dir / MANIFEST_FILE).read_text()).get("extra_files") or {}
    return [_digest_check(f"index sidecar {name}", build_dir / name, sha)
            for name, sha in sorted(recorded.items())]


def _checkpoint_checks(info) -> list[Check]:
    """Each model file against the catalog's manifest (older records: as far as they go), and
    the resume files named as not covered (no path that makes a model reads them)."""
    folder = Path(info.checkpoint_dir)
    try:
        files = read_checkpoint(folder)
    except (RetroOpsError, OSError) as exc:
        return [Check("checkpoint", False, f"{folder}: unreadable ({exc})")]
    checks = [Check(f"checkpoint {c.name}", c.ok is not False, c.detail, covered=c.ok is not None)
              for c in file_checks(info, files)]
    resume = [n for n in (STATE_FILE, OPTIMIZER_FILE) if (files.folder / n).exists()]
    if resume:
        checks.append(Check(f"checkpoint {', '.join(resume)}", True, "not covered: training-resume "
                            f"files, never read to make a model (the manifest covers {', '.join(MODEL_FILES)})",
                            covered=False))
    return checks


def verify(db: AuditDB, ref: str) -> VerifyReport:
    info = db.catalog.resolve_model(ref)
    purges = _purges(db, info.id)
    checks = _checkpoint_checks(info)
    with db.catalog.session() as s:
        cv = s.get(m.CorpusVersion, info.corpus_version_id)
        documents_version = cv.documents_lance_version
        rsv = s.get(m.RetrievalSetVersion, info.retrieval_set_version_id) \
            if info.retrieval_set_version_id else None
        build = s.get(m.IndexBuild, info.index_build_id) if info.index_build_id else None
        pins = [(DOCUMENTS, documents_version, f"corpus version {cv.id}")]
        if rsv is not None:
            pins += [(CHUNKS, rsv.chunks_lance_version, f"set version {rsv.id}"),
                     (rsv.embeddings_table, rsv.embeddings_lance_version, f"set version {rsv.id}"),
                     (MEMBERS, rsv.members_lance_version, f"set version {rsv.id}")]
        build_dir = Path(db.catalog.resolved_path(build.build_dir)) if build else None
        build_sha, manifest_sha = (build.sha256, build.manifest_sha256) if build else (None, None)
    if build_dir is not None and not build_dir.exists() and purges.affecting:
        checks.append(Check(f"index build {build_dir.name}", False,
                            f"{build_dir} held purged vectors: " + purges.explain()[1]))
    elif build_dir is not None:
        checks.append(_digest_check(f"index file {INDEX_FILE}", build_dir / INDEX_FILE, build_sha))
        checks.append(_digest_check(f"index manifest {MANIFEST_FILE}", build_dir / MANIFEST_FILE,
                                    manifest_sha))
        checks += _sidecar_checks(build_dir) if checks[-1].ok else []
    elif info.retrieval_set_version_id:
        checks.append(Check("index build", False, "no index build recorded for this model"))
    if info.reads_table:
        pins.append((info.reads_table, info.reads_lance_version, "model reads"))
    checks += [_lance_version_check(db, t, v, why, purges) for t, v, why in pins]
    if info.reads_table and checks[-1].ok:
        reads = read_model_reads(db.store, info.id, info.reads_lance_version, info.reads_table)
        actual = reads_digest(reads["train"], reads["neighbour"])
        checks.append(Check("model reads digest", actual == info.reads_digest,
                            f"{actual[:16]}... vs recorded {str(info.reads_digest)[:16]}..."))
    checks += _corpus_checks(db, info.corpus_version_id, purges)
    checks += _purge_checks(purges)
    return VerifyReport(info.ref, checks)
