"""Near-duplicate detection cost: MinHash signatures and LSH queries (datasketch), documents per
second and memory per document, against exact-duplicate hashing measured in the same run.

Text: the embedded corpora's paragraphs recombined into synthetic documents of `--doc-kb` KB
(seeded shuffle, so no two share more than chance), `--mb` MB in all; then `--planted` of them
are copied with one paragraph replaced (the near-duplicates the policy must find) and reported
as recall. The issue asks for a few hundred MB; on a 2-core machine shared with other work the
default is 20 MB (pass `--mb 300` where there is room): per-document costs do not depend on the
total, LSH query time grows only with the candidates found.
Stages: shingles + signature (`governance.dedup.signature`), LSH insert, LSH query (every
document against all), and sha256 of the normalised text (exact duplicates only) as the baseline.
Memory per document: tracemalloc peak of signing and indexing a 2,000-document sample, divided.
"""

from __future__ import annotations

import hashlib
import random
import tracemalloc

from _common import Column, base_parser, environment, load_documents, log, report, time_call


def synthetic(mb: float, doc_kb: float, seed: int) -> list[str]:
    paragraphs = [p.strip() for _, text in load_documents(["sotu", "moby_dick"])
                  for p in text.split("\n\n") if len(p.split()) >= 20]
    rng = random.Random(seed)
    docs, total, target = [], 0, int(mb * 1e6)
    while total < target:
        parts, size = [], 0
        while size < doc_kb * 1000:
            p = rng.choice(paragraphs)
            parts.append(p)
            size += len(p)
        doc = "\n\n".join(parts)
        docs.append(doc)
        total += len(doc)
    return docs


def main() -> None:
    parser = base_parser(__doc__, "unused (the bench reads the embedded corpora)")
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--doc-kb", type=float, default=8.0)
    parser.add_argument("--planted", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from retro_ops.governance.dedup import DedupConfig, _index, signatures
    from retro_ops.ids import normalise_text

    config = DedupConfig()
    docs = synthetic(args.mb, args.doc_kb, args.seed)
    rng = random.Random(args.seed + 1)
    planted = {}
    for i in rng.sample(range(len(docs)), min(args.planted, len(docs))):
        planted[f"copy{i}"] = f"doc{i}"
    texts = {f"doc{i}": d for i, d in enumerate(docs)}
    for copy, original in planted.items():
        parts = texts[original].split("\n\n")
        parts[rng.randrange(len(parts))] = f"A replaced paragraph that no original holds, number {copy}"
        texts[copy] = "\n\n".join(parts)
    n, size_mb = len(texts), sum(len(t) for t in texts.values()) / 1e6
    log(f"{n} documents, {size_mb:.1f} MB ({len(planted)} planted near-duplicates)")

    exact, _ = time_call(lambda: {k: hashlib.sha256(normalise_text(t).encode()).digest() for k, t in texts.items()})
    sign, sigs = time_call(lambda: signatures(texts, config))
    insert, lsh = time_call(lambda: _index(sigs, config))
    query, hits = time_call(lambda: {k: lsh.query(s) for k, s in sigs.items()})
    found = sum(1 for copy, original in planted.items() if original in hits[copy])
    false_pairs = sum(len(v) - 1 for k, v in hits.items()) - 2 * found
    sample = dict(list(texts.items())[:2000])
    tracemalloc.start()
    kept = _index(signatures(sample, config), config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del kept
    rows = [{"stage": name, "seconds": t.wall_s, "docs_per_s": n / t.wall_s, "mb_per_s": size_mb / t.wall_s,
             "vs_exact": exact.wall_s / t.wall_s}
            for name, t in (("exact sha256 (baseline)", exact), ("MinHash signatures", sign),
                            ("LSH insert", insert), ("LSH query, all documents", query))]
    report("dedup", [Column("stage", "stage"), Column("seconds", "wall s", "{:.2f}"),
                     Column("docs_per_s", "documents/s", "{:,.0f}"), Column("mb_per_s", "MB/s", "{:.2f}"),
                     Column("vs_exact", "speed vs exact hashing", "{:.3f}")], rows,
           {"documents": n, "mb": size_mb, "doc_kb": args.doc_kb, "policy": config.policy,
            "planted": len(planted), "planted_found": found, "other_candidate_pairs": false_pairs,
            "bytes_per_document_peak": peak / len(sample), **environment()},
           notes=[f"{n} documents, {size_mb:.1f} MB; planted near-duplicates found: {found}/{len(planted)}; "
                  f"other candidate pairs: {false_pairs}; memory while signing + indexing: "
                  f"{peak / len(sample) / 1024:.1f} KiB per document (tracemalloc peak, 2,000 documents)"])


if __name__ == "__main__":
    main()
