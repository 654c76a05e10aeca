"""Query-time exclusion filter overhead: p50 of `Retriever.retrieve` with filtering on vs off.

Builds a retrieval set over a few Moby-Dick chapters (real BERT, real FAISS) in a temporary
home, records `--exclusions` content-hash exclusions (random hashes: none match, so both runs
return the same neighbours and only the filter's cost differs) plus one chunk and one document
exclusion, then times `--queries` single-text retrievals (k=`--k`) each way, interleaved.
"On" reads the active exclusions from the SQLite catalog on every call, as serving does.

    python bench/exclusions.py --exclusions 1000 --queries 200
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import ActiveExclusions, NewExclusion
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import pipeline
from retro_ops.features.chunking import Chunker
from retro_ops.features.embedder import Embedder
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.indexing import publish_retrieval_set
from retro_ops.retrieval.retriever import Retriever
from retro_ops.settings import Settings

CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exclusions", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-exclusions-"))
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
                times[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(50):
            catalog.active_exclusions()
        read_ms = (time.perf_counter() - started) / 50 * 1000
        p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
        print(f"set: {on.version.n_chunks} chunks; {args.exclusions + 2} active exclusions; "
              f"{args.queries} queries, k={args.k}")
        print(f"retrieve p50 off {p50['off']:.2f} ms, on {p50['on']:.2f} ms: overhead "
              f"{p50['on'] - p50['off']:+.2f} ms ({p50['on'] / p50['off'] - 1:+.1%}); "
              f"active_exclusions() alone {read_ms:.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
