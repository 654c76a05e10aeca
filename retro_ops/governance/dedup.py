"""Near-duplicate documents by MinHash LSH over word n-grams (datasketch), and the policy that
keeps one representative of each cluster and excludes the others.

Why: RETRO's gains come largely from text shared between the database and the evaluated text
(Norlund et al. 2023); an edition of a held-out document that differs in a paragraph, or only in
whitespace and case, is the same text to the model. Exact `doc_id`s do not catch it, shingle
overlap does. Words are lower-cased and whitespace-free, so formatting never hides a duplicate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import NewExclusion

if TYPE_CHECKING:  # datasketch (which imports scipy) loads where signatures are computed
    from datasketch import MinHash, MinHashLSH

    from retro_ops.features.store import FeatureStore

REASON = "near-duplicate"
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DedupConfig:
    """ngram: words per shingle (5 ignores shared stock phrases, catches copied passages);
    threshold: estimated Jaccard similarity of shingle sets at and above which two documents are
    near-duplicates; num_perm: MinHash permutations (error of the estimate ~ 1/sqrt(num_perm));
    seed: the permutations (signatures are comparable only under one seed)."""

    ngram: int = 5
    threshold: float = 0.7
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 0.95:  # above ~0.95 LSH has too few bands to work
            raise ValueError(f"dedup threshold is a Jaccard similarity in (0, 0.95], got {self.threshold!r}")
        if self.ngram < 1 or self.num_perm < 16:
            raise ValueError(f"dedup needs ngram >= 1 and num_perm >= 16, got {self.ngram}, {self.num_perm}")

    @property
    def policy(self) -> str:
        return f"minhash-lsh:{self.ngram}-gram,jaccard>={self.threshold},perm={self.num_perm}"


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams of the lower-cased words (a text shorter than n words is one shingle)."""
    words = _WORD.findall(text.lower())
    if not words:
        return set()
    return {" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))}


def signature(text: str, config: DedupConfig) -> MinHash | None:
    """The document's MinHash, or None for a text with no words (it duplicates nothing)."""
    grams = shingles(text, config.ngram)
    if not grams:
        return None
    from datasketch import MinHash

    sig = MinHash(num_perm=config.num_perm, seed=config.seed)
    sig.update_batch(list(grams))
    return sig


def signatures(texts: Mapping[str, str], config: DedupConfig) -> dict[str, MinHash]:
    return {key: sig for key, text in texts.items() if (sig := signature(text, config)) is not None}


def _index(sigs: Mapping[str, MinHash], config: DedupConfig) -> MinHashLSH:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    with lsh.insertion_session() as session:
        for key, sig in sigs.items():
            session.insert(key, sig)
    return lsh


def _similar(sig: MinHash, candidates, sigs: Mapping[str, MinHash], config: DedupConfig):
    """LSH candidates whose estimated Jaccard really reaches the threshold (LSH over-reports)."""
    for other in candidates:
        score = sig.jaccard(sigs[other])
        if score >= config.threshold:
            yield other, score


@dataclass(frozen=True)
class Cluster:
    representative: str
    duplicates: dict[str, float]  # doc id -> estimated Jaccard with the representative


@dataclass(frozen=True)
class DedupReport:
    documents: int
    clusters: list[Cluster]
    seconds: float
    config: DedupConfig = field(default_factory=DedupConfig)

    @property
    def duplicates(self) -> dict[str, tuple[str, float]]:
        """doc id -> (its representative, similarity) for every document the policy drops."""
        return {d: (c.representative, s) for c in self.clusters for d, s in c.duplicates.items()}


def find_near_duplicates(texts: Mapping[str, str], config: DedupConfig = DedupConfig()) -> DedupReport:
    """Clusters (connected components of near-duplicate pairs) among `texts` (doc id -> text).
    Each keeps its longest document (ties: the smallest id) as the representative."""
    started = time.perf_counter()
    sigs = signatures(texts, config)
    lsh = _index(sigs, config)
    parent = {key: key for key in sigs}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for key, sig in sigs.items():
        for other, _ in _similar(sig, lsh.query(sig), sigs, config):
            parent[root(other)] = root(key)
    groups: dict[str, list[str]] = {}
    for key in sigs:
        groups.setdefault(root(key), []).append(key)
    clusters = []
    for members in groups.values():
        if len(members) < 2:
            continue
        keep = min(members, key=lambda d: (-len(texts[d]), d))
        clusters.append(Cluster(keep, {d: float(sigs[keep].jaccard(sigs[d]))
                                       for d in sorted(members) if d != keep}))
    clusters.sort(key=lambda c: c.representative)
    return DedupReport(len(texts), clusters, time.perf_counter() - started, config)


def near_duplicates_of(queries: Mapping[str, str], candidates: Mapping[str, str],
                       config: DedupConfig = DedupConfig()) -> dict[str, str]:
    """candidate doc id -> the query document it near-duplicates (or is), for every candidate
    that near-duplicates some query: what a leak-free split or evaluation must not retrieve."""
    cand_sigs = signatures({k: v for k, v in candidates.items() if k not in queries}, config)
    found = {k: k for k in candidates if k in queries}
    if not cand_sigs:
        return found
    lsh = _index(cand_sigs, config)
    for query, sig in signatures(queries, config).items():
        for other, _ in _similar(sig, lsh.query(sig), cand_sigs, config):
            found.setdefault(other, query)
    return found


def corpus_texts(catalog: Catalog, store: FeatureStore, corpora: list[str]) -> dict[str, str]:
    """doc id -> text of every document in the latest version of each named corpus."""
    doc_ids = sorted({d for name in corpora
                      for d in catalog.corpus_doc_ids(catalog.latest_corpus_version(name).id)})
    return store.document_texts(doc_ids)


def record_near_duplicates(catalog: Catalog, report: DedupReport, *, actor: str) -> list[int]:
    """The policy: every document but its cluster's representative becomes an exclusion of
    scope `document`, reason `near-duplicate`, scored by its similarity (idempotent)."""
    items = [NewExclusion(scope="document", target=doc, reason=REASON, policy=report.config.policy,
                          scorer=f"datasketch-minhash:{rep}", score=round(score, 4))
             for doc, (rep, score) in sorted(report.duplicates.items())]
    return catalog.record_exclusions(items, actor=actor) if items else []


def signature_bytes(config: DedupConfig) -> int:
    """Memory of one signature's hash values (what an index holds per document, before LSH keys)."""
    return int(np.dtype(np.uint64).itemsize * config.num_perm)
