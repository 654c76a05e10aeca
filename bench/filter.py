"""Filtering toxic and private chunks: scoring speed, rebuild routes, query-time filter cost.

Three parts, each against a baseline measured in the same run:

  scoring   chunks/s of each scorer (toxicity, PII, blocklist) on real Moby-Dick chunks, next
            to the frozen BERT's embedding chunks/s (what every chunk costs anyway).
  rebuild   --n synthetic normalised 384-d vectors (clustered, seeded) indexed with the structure
            retro-ops chooses for that size; for each excluded fraction, the time to remove the
            ids from a copy of the index (the incremental route) vs a full rebuild of the rest,
            with recall@10 of both against exact search (500 held-out queries). Both routes also
            pay serialize + sha256 to publish; the incremental one also loads the published index
            (deserialize): both are timed and shown.
  query     p50/p99 of `Retriever.retrieve` (real BERT, FAISS, SQLite catalog) with query-time
            filtering on vs off, --exclusions random content-hash exclusions (none match, so both
            return the same neighbours and only the filter's cost differs), interleaved.

    python bench/filter.py --n 1000000
    python bench/filter.py --n 200000 --parts rebuild     (docs/results/2026-12-01-exclusions.md: a shared host)
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from _common import Column, best_of, environment, load_documents, log, report_tables

from retro_ops.default_corpora import CORPORA_DIR

PARTS = ("scoring", "rebuild", "query")
CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt"]


def parse_args():
    head, _, tail = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=head, epilog=tail,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors in the rebuild part")
    parser.add_argument("--fractions", default="0.001,0.01,0.1", help="excluded fractions of --n")
    parser.add_argument("--score-chunks", type=int, default=5000, help="real chunks to score")
    parser.add_argument("--embed-chunks", type=int, default=256, help="chunks embedded as the baseline")
    parser.add_argument("--exclusions", type=int, default=1000, help="active exclusions in the query part")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    return parser.parse_args()


# -- scoring ------------------------------------------------------------------------------------
def scoring_rows(args) -> list[dict]:
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder
    from retro_ops.governance.scorers import make_scorer, scorer_key

    embedder = Embedder()
    chunks = list(Chunker(embedder.tokenizer).chunk_documents(load_documents(["moby_dick"])))
    texts = [c.text for c in chunks][:args.score_chunks]
    sample = texts[:args.embed_chunks]
    timing, _ = best_of(lambda: embedder.embed(sample), runs=1, warmup=1)
    bert = len(sample) / timing.wall_s
    rows = [{"scorer": "baseline: BERT embedding (MiniLM, fp32)", "chunks": len(sample),
             "chunks_per_s": bert, "vs_bert": 1.0, "flagged": None}]
    for name, options in (("toxicity", {}), ("pii", {}), ("blocklist", {"patterns": ["TAKEDOWN-\\d+", "ahab"]})):
        scorer = make_scorer(name, options)
        timing, scores = best_of(partial(scorer.score, texts), runs=3, warmup=1)
        rate = len(texts) / timing.wall_s
        rows.append({"scorer": scorer_key(scorer), "chunks": len(texts), "chunks_per_s": rate,
                     "vs_bert": rate / bert, "flagged": sum(s >= 0.9 for s, _ in scores)})
        log(f"scoring {name}: {rate:,.0f} chunks/s")
    return rows


# -- rebuild -------------------------------------------------------------------------------------
def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    """Normalised points around random centres: neighbourhoods an IVF can find, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):
        size = min(65_536, n - start)
        block = centres[rng.integers(0, clusters, size)] + 0.6 * rng.standard_normal((size, dim), dtype=np.float32)
        out[start:start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _manifest(built, n: int):
    """The published manifest the incremental route reads (only its build fields matter here)."""
    from retro_ops.retrieval.index.publish import IndexManifest

    return IndexManifest(factory=built.factory, metric="inner_product", dim=built.index.d, ntotal=n,
                         embedding_space_id="synthetic", retrieval_set="bench", retrieval_set_version_id=0,
                         retrieval_set_digest="", train_size=built.train_size, sha256="0" * 64,
                         index_bytes=0, build_seconds=built.seconds, search_params=built.search_params,
                         faiss_version="", created_at="", notes=[], full_build_ntotal=n)


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def rebuild_rows(args) -> list[dict]:
    import faiss

    from retro_ops.ids import sha256_hex
    from retro_ops.retrieval.index.build import build_index
    from retro_ops.retrieval.index.incremental import IncrementalConfig, count_blocker, incremental_build
    from retro_ops.retrieval.index.publish import serialize
    from retro_ops.retrieval.index.quality import evaluate_index

    log(f"rebuild: drawing {args.n:,} vectors")
    vectors, ids = clustered_vectors(args.n, 384), np.arange(1, args.n + 1, dtype=np.int64) * 11
    seconds, base = _timed(build_index, vectors, ids)
    log(f"rebuild: full build of {args.n:,} ({base.factory}) in {seconds:.1f} s")
    quality = evaluate_index(base.index, vectors, ids)

    def publish_cost() -> bytes:  # what either route pays before publish_index writes the bytes
        data = serialize(base.index)
        sha256_hex(data)
        return data

    publish_s, data = _timed(publish_cost)
    load_s, _ = _timed(faiss.deserialize_index, np.frombuffer(data, dtype=np.uint8))
    rows = [{"excluded": "0 (the published index)", "route": "full", "seconds": seconds, "recall": quality.recall_at_k,
             "p50_ms": quality.p50_ms, "ratio": None, "default_route": "-", "factory": base.factory}]
    manifest, rng = _manifest(base, args.n), np.random.default_rng(1)
    for fraction in (float(f) for f in args.fractions.split(",")):
        gone = rng.choice(args.n, max(1, round(fraction * args.n)), replace=False)
        keep = np.ones(args.n, dtype=bool)
        keep[gone] = False
        kept_vectors, kept_ids = np.ascontiguousarray(vectors[keep]), ids[keep]
        refused = count_blocker(manifest, int(keep.sum()), IncrementalConfig())
        copy_s, copy = _timed(faiss.clone_index, base.index)
        remove_s, (built, route) = _timed(incremental_build, copy, manifest, kept_ids,
                                          IncrementalConfig(max_removed_fraction=1.0))
        assert built is not None and built.index.ntotal == len(kept_ids), route.reason
        removal = evaluate_index(built.index, kept_vectors, kept_ids)
        full_s, full = _timed(build_index, kept_vectors, kept_ids)
        rebuilt = evaluate_index(full.index, kept_vectors, kept_ids)
        label = f"{fraction:.1%} ({len(gone):,})"
        rows += [{"excluded": label, "route": "incremental (remove_ids)", "seconds": remove_s, "copy_s": copy_s,
                  "recall": removal.recall_at_k, "p50_ms": removal.p50_ms, "ratio": remove_s / full_s,
                  "e2e_ratio": (load_s + remove_s + publish_s) / (full_s + publish_s),
                  "default_route": "full" if refused else "incremental", "factory": base.factory},
                 {"excluded": label, "route": "full rebuild", "seconds": full_s, "recall": rebuilt.recall_at_k,
                  "p50_ms": rebuilt.p50_ms, "ratio": 1.0, "e2e_ratio": 1.0, "default_route": "",
                  "factory": full.factory}]
        log(f"rebuild {label}: removal {remove_s:.2f} s (recall {removal.recall_at_k:.3f}), "
            f"full {full_s:.1f} s (recall {rebuilt.recall_at_k:.3f})")
        del copy, built, full
    for row in rows:
        row.update(publish_s=publish_s, load_s=load_s)
    return rows


# -- query-time filtering --------------------------------------------------------------------------
def query_rows(args) -> list[dict]:
    """Formerly bench/exclusions.py: retrieve p50/p99 with the exclusion filter on vs off."""
    from retro_ops.catalog import Catalog
    from retro_ops.catalog.exclusions import ActiveExclusions, NewExclusion
    from retro_ops.features import pipeline
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder
    from retro_ops.features.store import FeatureStore
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.retrieval.retriever import Retriever
    from retro_ops.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        for name in CHAPTERS:
            shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
        settings = Settings(home=root / "home")
        settings.ensure_dirs()
        catalog = Catalog.open(settings.catalog_url, home=settings.home)
        store, embedder = FeatureStore(settings.lancedb_uri), Embedder()
        catalog.add_corpus("b", str(corpus))
        pipeline.materialize_corpus(catalog, store, Chunker(embedder.tokenizer), embedder, "b")
        catalog.create_retrieval_set("b", ["b"])
        publish_retrieval_set(catalog, store, settings.indices_dir, "b", embedder.space)
        catalog.record_exclusions(
            [NewExclusion("content_hash", secrets.token_hex(16), "bench") for _ in range(args.exclusions)]
            + [NewExclusion("chunk", "1", "bench"), NewExclusion("document", "0" * 32, "bench")], actor="bench")
        on = Retriever.open(catalog, store, embedder, settings.indices_dir, "b")
        off = Retriever(on.index, on.manifest, on.version, store, embedder, exclusions=ActiveExclusions)
        texts = [r["text"] for r in store.members(on.version.digest, ["text"]).to_pylist()]
        texts = (texts * (args.queries // len(texts) + 1))[:args.queries]
        times: dict[str, list[float]] = {"off": [], "on": []}
        for text in texts:
            for name, retriever in (("off", off), ("on", on)):
                started = time.perf_counter()
                retriever.retrieve([text], k=args.k)
                times[name].append((time.perf_counter() - started) * 1000)
        read_s, _ = _timed(lambda: [catalog.active_exclusions() for _ in range(50)])
        p50 = {name: statistics.median(values) for name, values in times.items()}
        return [{"filter": name, "chunks": on.version.n_chunks, "exclusions": args.exclusions + 2,
                 "queries": len(values), "p50_ms": p50[name], "p99_ms": float(np.percentile(values, 99)),
                 "vs_off": p50[name] / p50["off"], "list_read_ms": read_s / 50 * 1000 if name == "on" else None}
                for name, values in times.items()]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FAISS on a shared host (docs/results/2026-11-26-index.md)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(unknown)} (known: {', '.join(PARTS)})")
    tables = []
    if "scoring" in parts:
        tables.append(("scoring", [Column("scorer", "scorer"), Column("chunks", "chunks", "{:,}"),
                                   Column("chunks_per_s", "chunks/s", "{:,.0f}"),
                                   Column("vs_bert", "x BERT embedding", "{:.1f}"),
                                   Column("flagged", "flagged (>= 0.9)")], scoring_rows(args)))
    if "rebuild" in parts:
        tables.append((f"rebuild after exclusions, {args.n:,} synthetic vectors",
                       [Column("excluded", "excluded"), Column("route", "route"),
                        Column("seconds", "index s", "{:.2f}"), Column("ratio", "vs full", "{:.1%}"),
                        Column("e2e_ratio", "with load+publish, vs full", "{:.1%}"),
                        Column("recall", "recall@10", "{:.3f}"), Column("p50_ms", "p50 ms", "{:.3f}"),
                        Column("copy_s", "copy s", "{:.2f}"), Column("default_route", "default policy"),
                        Column("load_s", "load s (both)", "{:.2f}"),
                        Column("publish_s", "serialize+sha256 s (both)", "{:.2f}")], rebuild_rows(args)))
    if "query" in parts:
        tables.append(("query-time filtering", [
            Column("filter", "filter"), Column("chunks", "chunks"), Column("exclusions", "active exclusions"),
            Column("queries", "queries"), Column("p50_ms", "p50 ms", "{:.2f}"), Column("p99_ms", "p99 ms", "{:.2f}"),
            Column("vs_off", "p50 vs off", "{:.3f}"), Column("list_read_ms", "list read ms", "{:.2f}")],
            query_rows(args)))
    report_tables("filter", tables, meta={**environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
