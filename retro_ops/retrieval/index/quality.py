"""Measure an index: recall@k against exact search, single-query latency, batch throughput.

Queries are a seeded sample of the indexed vectors themselves, held out from their own answer:
each query's own id is removed from both the exact and the approximate result lists, so a
trivial self-match never inflates recall.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class IndexQuality:
    k: int
    queries: int
    recall_at_k: float
    p50_ms: float
    p99_ms: float
    batch_qps: float

    def as_metadata(self) -> dict:
        return {f"recall_at_{self.k}": round(self.recall_at_k, 4), "eval_queries": self.queries,
                "p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4),
                "batch_qps": round(self.batch_qps, 1)}


def _without_self(found: np.ndarray, own: np.ndarray, k: int) -> list[set[int]]:
    return [set([i for i in row if i != me and i != -1][:k]) for row, me in zip(found, own)]


def exact_neighbours(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    return flat.search(queries, k)[1]


def evaluate_index(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, *, k: int = 10,
                   queries: int = 500, latency_queries: int = 200, seed: int = 0) -> IndexQuality:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))
    q, own = np.ascontiguousarray(vectors[pick]), ids[pick]
    depth = min(k + 1, len(vectors))
    truth = _without_self(exact_neighbours(vectors, ids, q, depth), own, k)
    started = time.perf_counter()
    approx = _without_self(index.search(q, depth)[1], own, k)
    batch_seconds = time.perf_counter() - started
    hits = sum(len(a & t) for a, t in zip(approx, truth))
    total = sum(len(t) for t in truth)
    timings = []
    for row in q[:latency_queries]:
        one = row[None, :]
        t0 = time.perf_counter()
        index.search(one, k)
        timings.append((time.perf_counter() - t0) * 1000)
    return IndexQuality(k, len(q), hits / total if total else 1.0,
                        float(np.percentile(timings, 50)), float(np.percentile(timings, 99)),
                        len(q) / batch_seconds if batch_seconds > 0 else float("inf"))
