"""Lineage audit latency: the DuckDB engine (`retro_ops.lineage`) against a plain
SQLAlchemy + LanceDB-scan implementation of the same questions, on one synthetic store.

The store is written through the library's own write paths (Catalog.add_corpus /
record_corpus_version / record_model / record_deployment..., FeatureStore.add_documents /
add_chunks / add_members, training.reads.record_model_reads), never by hand-written SQL:
`--docs` documents (10,000) of `--chunks-per-doc` chunks (100: 1M chunks) in two versions of one
corpus (version 2 drops the first 10% of documents and adds as many new ones), two
retrieval-set versions (half the corpus, all of it), `--models` models (20), each trained on
`--train-docs` documents (1,000) and reading `--neighbours` neighbour chunks (20,000), and
`--deployments` serving periods (50) swapping between the two sets.

Questions (each answered by both implementations, answers compared, best of `--runs`):
  backward  `lineage model`: documents with sources, bytes and chunk counts, training and
            neighbour chunks with their documents, set, index, evaluations, deployments.
  forward   `lineage doc`: corpus versions, set versions, index builds, models trained on it,
            models that read it as a neighbour, deployments, exclusions.
  diff      `lineage diff` of two models: documents and chunks added and removed.
The plain path reads the catalog with SQLAlchemy ORM queries and LanceDB tables with full
scans of the needed columns (no filter pushdown), joining in Python: what one writes without
an engine. Model reads carry their chunk's doc_id (recorded at training): the plain path runs
both with it and without it (naming read chunks' documents through the chunk -> document map),
and the faster of the two is the one compared. Both count chunks per document from the chunks
table's doc_id column.
Goal: every audit under 1 s and under a tenth of the plain path.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Column, base_parser, best_of, environment, log, report_tables  # noqa: E402

from retro_ops.catalog import Catalog  # noqa: E402
from retro_ops.catalog import tables as m  # noqa: E402
from retro_ops.corpus import Document  # noqa: E402
from retro_ops.features.chunking import Chunk  # noqa: E402
from retro_ops.features.store import FeatureStore  # noqa: E402
from retro_ops.features.schemas import CHUNKS, MEMBERS  # noqa: E402
from retro_ops.ids import chunk_id, document_id  # noqa: E402
from retro_ops.lineage.audit import backward, forward_document  # noqa: E402
from retro_ops.lineage.diff import diff  # noqa: E402
from retro_ops.lineage.views import AuditDB, lance_arrow  # noqa: E402
from retro_ops.retrieval.sets import set_digest  # noqa: E402
from retro_ops.settings import Settings  # noqa: E402
from retro_ops.training.reads import record_model_reads  # noqa: E402


def _docs(start: int, stop: int, per_doc: int) -> list[tuple[Document, list[Chunk]]]:
    out = []
    for i in range(start, stop):
        texts = [f"d{i} c{j} " for j in range(per_doc)]
        text = "".join(texts)
        doc_id = document_id(text)
        ids = [chunk_id(doc_id, j) for j in range(per_doc)]
        chunks = [Chunk(ids[j], doc_id, j, [j % 100, i % 100], texts[j], 0, 0,
                        ids[j + 1] if j + 1 < per_doc else None) for j in range(per_doc)]
        out.append((Document(doc_id, text, [f"part{i % 7}/doc{i}.txt"]), chunks))
    return out


def build_store(home: Path, args) -> dict:
    settings = Settings(home=home)
    settings.ensure_dirs()
    catalog = Catalog.open(settings.catalog_url, home=home)
    store = FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("synth", str(home.parent / "synth"))
    drop = args.docs // 10
    docs = _docs(0, args.docs + drop, args.chunks_per_doc)
    for start in range(0, len(docs), 1000):
        block = docs[start:start + 1000]
        store.add_documents([d for d, _ in block])
        store.add_chunks([c for _, cs in block for c in cs])
        log(f"wrote {start + len(block)} documents")
    versions = []
    for lo, hi in ((0, args.docs), (drop, args.docs + drop)):
        part = [d for d, _ in docs[lo:hi]]
        versions.append(catalog.record_corpus_version(
            "synth", part, f"synth-{lo}", documents_lance_version=store.version("documents")))
    space = m.EmbeddingSpaceRow(id="synthspace", model_name="synthetic", model_path="-",
                                weights_digest="0" * 64, pooling="mean", normalize=True, dim=4,
                                max_tokens=64)
    with catalog.session() as s:
        s.add(space)
    catalog.create_retrieval_set("half", ["synth"])
    catalog.create_retrieval_set("all", ["synth"])
    set_versions, builds = [], []
    for name, (lo, hi) in (("half", (drop, drop + args.docs // 2)), ("all", (drop, args.docs + drop))):
        chunks = [c for _, cs in docs[lo:hi] for c in cs]
        ids = np.array(sorted(c.chunk_id for c in chunks), dtype=np.int64)
        digest = set_digest(ids, "synthspace")
        members = pa.table({"set_digest": [digest] * len(chunks), "chunk_id": [c.chunk_id for c in chunks],
                            "doc_id": [c.doc_id for c in chunks], "position": [c.position for c in chunks],
                            "content_hash": [c.content_hash for c in chunks], "text": [c.text for c in chunks],
                            "token_ids": [c.token_ids for c in chunks],
                            "continuation_text": [""] * len(chunks), "continuation_token_ids": [[]] * len(chunks)})
        write = store.add_members(digest, members)
        version = catalog.record_retrieval_set_version(
            name, digest=digest, n_chunks=len(chunks), n_excluded=0, corpus_version_ids=[versions[1].id],
            embedding_space_id="synthspace", chunks_lance_version=store.version(CHUNKS),
            embeddings_table="embeddings_synthspace", embeddings_lance_version=0,
            members_lance_version=write.version)
        set_versions.append(version)
        builds.append(catalog.record_index_build(
            version.id, build_dir=f"indices/{name}/b1", factory="IVF1024,Flat", ntotal=len(chunks),
            sha256="1" * 64, manifest_sha256="2" * 64, manifest={}))
        log(f"set {name}: {len(chunks)} members")
    rng = np.random.default_rng(0)
    chunk_of_doc = {d.doc_id: [c.chunk_id for c in cs] for d, cs in docs}
    models = []
    for i in range(args.models):
        version = versions[i % 2]
        doc_ids = catalog.corpus_doc_ids(version.id)
        trained = sorted(rng.choice(doc_ids, args.train_docs, replace=False).tolist())
        sv = set_versions[i % 2]
        pool = chunk_of_doc  # neighbours: chunks of random documents of the set
        neighbour_docs = rng.choice(doc_ids, args.neighbours // 10, replace=False)
        neighbours = [c for d in neighbour_docs for c in pool[d][:10]]
        info = catalog.record_model(
            kind="retro", key=f"k{i}", checkpoint_dir=str(home / "checkpoints" / f"m{i}"),
            weights_sha256="3" * 64, config={}, corpus_version_id=version.id,
            retrieval_set_version_id=sv.id, index_build_id=builds[i % 2], parent_model_id=None,
            embedding_space_id="synthspace", tokenizer_id="t", code_version="bench",
            training_doc_ids=trained)
        reads = record_model_reads(store, info.id, np.array([c for d in trained for c in chunk_of_doc[d]]),
                                   np.array(neighbours))
        catalog.set_model_reads(info.id, table=reads.table, lance_version=reads.lance_version,
                                digest=reads.digest, n_training_chunks=reads.n_training_chunks,
                                n_neighbour_chunks=reads.n_neighbour_chunks)
        models.append(info)
    log(f"{len(models)} models")
    row = None
    for i in range(args.deployments):
        row = catalog.record_deployment(model_id=models[i % len(models)].id,
                                        retrieval_set_version_id=set_versions[i % 2].id, action="swap",
                                        endpoint="bench", replaces=row)
    probe = next(d for d in catalog.model_training_doc_ids(models[0].id))
    return {"catalog": catalog, "store": store, "models": models, "doc": probe}


# -- the plain path: SQLAlchemy ORM + full LanceDB scans, joined in Python ---------------------

def _scan(store: FeatureStore, name: str, columns: list[str]) -> list[dict]:
    """A full scan of the needed columns, with the engine's own (fast, big-batch) reader."""
    return lance_arrow(store, name, columns).to_pylist()


def plain_backward(catalog: Catalog, store: FeatureStore, model_id: int) -> dict:
    with catalog.session() as s:
        model = s.get(m.ModelRecord, model_id)
        docs = [r.doc_id for r in s.scalars(select(m.CorpusVersionDocument).where(
            m.CorpusVersionDocument.corpus_version_id == model.corpus_version_id))]
        sources: dict[str, list[str]] = {}
        for r in s.scalars(select(m.CorpusVersionSource).where(
                m.CorpusVersionSource.corpus_version_id == model.corpus_version_id)):
            sources.setdefault(r.doc_id, []).append(r.source_uri)
        trained = {r.doc_id for r in s.scalars(select(m.ModelTrainingDocument).where(
            m.ModelTrainingDocument.model_id == model_id))}
        deployments = [r.id for r in s.scalars(select(m.DeploymentRecord).where(
            m.DeploymentRecord.model_id == model_id))]
    counts = Counter(r["doc_id"] for r in _scan(store, CHUNKS, ["doc_id"]))
    reads = [r for r in _scan(store, "model_reads", ["model_id", "role", "chunk_id", "doc_id"])
             if r["model_id"] == model_id]  # each read names its document (recorded at training)
    return {"documents": {d: (sources.get(d, []), counts[d], d in trained) for d in docs},
            "neighbours": sorted((r["chunk_id"], r["doc_id"]) for r in reads if r["role"] == "neighbour"),
            "deployments": deployments}


def plain_backward_chunk_map(catalog: Catalog, store: FeatureStore, model_id: int) -> dict:
    """The same answer without the recorded doc_id: neighbours named through the chunk map."""
    found = plain_backward(catalog, store, model_id)
    doc_of = {r["chunk_id"]: r["doc_id"] for r in _scan(store, CHUNKS, ["chunk_id", "doc_id"])}
    reads = [r for r in _scan(store, "model_reads", ["model_id", "role", "chunk_id"]) if r["model_id"] == model_id]
    found["neighbours"] = sorted((r["chunk_id"], doc_of.get(r["chunk_id"])) for r in reads
                                 if r["role"] == "neighbour")
    return found


def plain_forward(catalog: Catalog, store: FeatureStore, doc_id: str) -> dict:
    chunks = {r["chunk_id"] for r in _scan(store, CHUNKS, ["chunk_id", "doc_id"]) if r["doc_id"] == doc_id}
    digests = {r["set_digest"] for r in _scan(store, MEMBERS, ["set_digest", "chunk_id"]) if r["chunk_id"] in chunks}
    reads = [r for r in _scan(store, "model_reads", ["model_id", "role", "chunk_id"]) if r["chunk_id"] in chunks]
    with catalog.session() as s:
        versions = [r.corpus_version_id for r in s.scalars(select(m.CorpusVersionDocument).where(
            m.CorpusVersionDocument.doc_id == doc_id))]
        set_versions = [v.id for v in s.scalars(select(m.RetrievalSetVersion)) if v.digest in digests]
        deployments = [d.id for d in s.scalars(select(m.DeploymentRecord))
                       if d.retrieval_set_version_id in set_versions]
    return {"corpus_versions": versions, "set_versions": set_versions, "deployments": deployments,
            "trained": sorted({r["model_id"] for r in reads if r["role"] == "train"}),
            "neighbour": sorted({r["model_id"] for r in reads if r["role"] == "neighbour"})}


def plain_diff(store: FeatureStore, a: int, b: int) -> dict:
    reads = _scan(store, "model_reads", ["model_id", "role", "chunk_id", "doc_id"])
    ra = [r for r in reads if r["model_id"] == a and r["role"] == "train"]
    rb = [r for r in reads if r["model_id"] == b and r["role"] == "train"]
    sa, sb = {r["chunk_id"] for r in ra}, {r["chunk_id"] for r in rb}
    da, db_ = {r["doc_id"] for r in ra}, {r["doc_id"] for r in rb}
    return {"documents_added": sorted(db_ - da), "documents_removed": sorted(da - db_),
            "chunks_added": sorted(sb - sa), "chunks_removed": sorted(sa - sb)}


def plain_diff_chunk_map(store: FeatureStore, a: int, b: int) -> dict:
    """The same answer without the recorded doc_id: documents through the chunk map."""
    reads = _scan(store, "model_reads", ["model_id", "role", "chunk_id"])
    doc_of = {r["chunk_id"]: r["doc_id"] for r in _scan(store, CHUNKS, ["chunk_id", "doc_id"])}
    sa = {r["chunk_id"] for r in reads if r["model_id"] == a and r["role"] == "train"}
    sb = {r["chunk_id"] for r in reads if r["model_id"] == b and r["role"] == "train"}
    da, db_ = {doc_of[c] for c in sa}, {doc_of[c] for c in sb}
    return {"documents_added": sorted(db_ - da), "documents_removed": sorted(da - db_),
            "chunks_added": sorted(sb - sa), "chunks_removed": sorted(sa - sb)}


def main() -> None:
    parser = base_parser(__doc__, "Unused: the store is built in --workdir.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/retro_ops_lineage_bench"))
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--chunks-per-doc", type=int, default=100)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--train-docs", type=int, default=1_000)
    parser.add_argument("--neighbours", type=int, default=20_000)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="Reuse a store built by an earlier run.")
    args = parser.parse_args()
    home = args.workdir / "home"
    if not args.reuse:
        shutil.rmtree(args.workdir, ignore_errors=True)
    built = build_store(home, args) if not args.reuse else None
    catalog = built["catalog"] if built else Catalog.open(Settings(home=home).catalog_url, home=home)
    store = built["store"] if built else FeatureStore(Settings(home=home).lancedb_uri)
    models = built["models"] if built else catalog.list_models()
    doc = built["doc"] if built else catalog.model_training_doc_ids(models[0].id)[0]
    a, b = models[0], models[1]

    def engine(question):
        db = AuditDB(catalog, store)  # a fresh connection per question, as one CLI call has
        try:
            return question(db)
        finally:
            db.close()

    # plain variants: with and without the doc_id recorded in model_reads; the faster one counts
    questions = {
        "backward": (lambda: engine(lambda db: backward(db, f"model-{a.id}")),
                     [lambda: plain_backward(catalog, store, a.id),
                      lambda: plain_backward_chunk_map(catalog, store, a.id)]),
        "forward": (lambda: engine(lambda db: forward_document(db, doc)),
                    [lambda: plain_forward(catalog, store, doc)]),
        "diff": (lambda: engine(lambda db: diff(db, f"model-{a.id}", f"model-{b.id}")),
                 [lambda: plain_diff(store, a.id, b.id), lambda: plain_diff_chunk_map(store, a.id, b.id)]),
    }
    rows = []
    for name, (fast, plains) in questions.items():
        t_fast, r_fast = best_of(fast, args.runs, warmup=1)
        timed = [best_of(plain, args.runs) for plain in plains]
        t_plain = min(t.wall_s for t, _ in timed)
        rows.append({"audit": name, "duckdb_s": t_fast.wall_s, "plain_s": t_plain,
                     "ratio": t_fast.wall_s / t_plain,
                     "agree": all(_agree(name, r_fast, r_plain) for _, r_plain in timed)})
        log(f"{name}: {t_fast.wall_s:.3f} s vs plain {' / '.join(f'{t.wall_s:.3f}' for t, _ in timed)} s")
    n_chunks = store.db.open_table(CHUNKS).count_rows()
    n_reads = store.db.open_table("model_reads").count_rows()
    columns = [Column("audit", "audit"), Column("duckdb_s", "DuckDB engine (s)", "{:.3f}"),
               Column("plain_s", "plain SQLAlchemy + scans (s)", "{:.3f}"),
               Column("ratio", "engine / plain", "{:.3f}"), Column("agree", "answers agree")]
    meta = {**environment(), **vars(args), "chunks": n_chunks, "model_reads_rows": n_reads}
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in meta.items()}
    report_tables("lineage", [(f"Lineage audits, {n_chunks:,} chunks, {len(models)} models, "
                               f"{n_reads:,} model-read rows", columns, rows)], meta)


def _agree(name: str, fast, plain) -> bool:
    if name == "backward":
        docs = {d["doc_id"]: (d["chunks"], d["role"] == "train") for d in fast.lists["documents"]}
        return docs == {d: (c, t) for d, (_, c, t) in plain["documents"].items()} and \
            [(r["chunk_id"], r["doc_id"]) for r in fast.lists["neighbour_chunks"]] == plain["neighbours"]
    if name == "forward":
        return [r["id"] for r in fast.lists["models_trained_on_it"]] == plain["trained"] and \
            [r["id"] for r in fast.lists["models_read_as_neighbour"]] == plain["neighbour"] and \
            sorted(d["id"] for d in fast.lists["deployments"]) == sorted(plain["deployments"])
    return fast.documents_added == plain["documents_added"] and fast.chunks_added == plain["chunks_added"]


if __name__ == "__main__":
    main()
