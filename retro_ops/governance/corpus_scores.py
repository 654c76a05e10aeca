"""Score every distinct chunk text of a corpus with each scorer, once per scorer version.

Scores are the `chunk_scores` feature set keyed by (content hash, scorer id@version): texts a
scorer version has already scored are read back, never rescored, so re-scoring a corpus after
one new document scores only that document's new texts. Policies (`governance.policy`) read the
same rows, so scoring ahead of `retro-ops exclude apply` makes the apply cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from retro_ops.catalog import Catalog
from retro_ops.features.store import FeatureStore
from retro_ops.governance.scorers import Scorer, scorer_key


@dataclass(frozen=True)
class ScorerSummary:
    scorer: str  # id@version
    texts: int
    newly_scored: int
    flagged: int  # texts scoring >= the threshold asked for
    max_score: float


def ensure_scores(store: FeatureStore, scorer: Scorer, text_by_hash: dict[str, str], *,
                  write: bool = True) -> tuple[dict[str, tuple[float, str]], int]:
    """{content_hash: (score, detail)} for every hash, scoring only the ones not stored yet
    (stored unless `write` is False, as for a dry run); and how many were scored now."""
    key = scorer_key(scorer)
    hashes = sorted(text_by_hash)
    known = store.scores_of(key, hashes)
    todo = [h for h in hashes if h not in known]
    fresh = scorer.score([text_by_hash[h] for h in todo])
    if todo and write:
        store.add_scores(key, todo, [s for s, _ in fresh], [d for _, d in fresh])
    known.update(zip(todo, fresh))
    return known, len(todo)


def score_corpus(catalog: Catalog, store: FeatureStore, corpus: str, scorers: list[Scorer], *,
                 flag_at: float = 0.5) -> list[ScorerSummary]:
    """Score the distinct chunk texts of the corpus's latest version with each scorer."""
    version = catalog.latest_corpus_version(corpus)
    rows = store.chunks_of_documents(catalog.corpus_doc_ids(version.id), ["content_hash", "text"])
    text_by_hash = dict(zip(rows.column("content_hash").to_pylist(), rows.column("text").to_pylist()))
    out = []
    for scorer in scorers:
        scores, new = ensure_scores(store, scorer, text_by_hash)
        values = [s for s, _ in scores.values()]
        out.append(ScorerSummary(scorer_key(scorer), len(values), new,
                                 sum(v >= flag_at for v in values), max(values, default=0.0)))
    return out
