"""Build a FAISS index whose ids are chunk ids, choosing its structure by size like autofaiss.

Inner product on L2-normalised vectors (= cosine). Small sets get exact search; larger ones an
inverted file; at scale IVF-HNSW with 4-bit fast-scan PQ and an exact refine that reads the full
vectors from disk (`disk_refine`), the family of the RETRO build of the Pile
(`OPQ16_64,IVF1048576_HNSW32,PQ16x4fs`): RAM holds codes and ids only. Odd inputs never break
the build: too few training points lower nlist (or fall back to flat), and NaN/Inf or
wrong-dimension vectors are refused with a count before anything is added.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from retro_ops.errors import IndexBuildError
from retro_ops.retrieval.index.disk_refine import MARKER, DiskRefinedIndex, coarse_factory, is_disk_refined

MIN_POINTS_PER_CENTROID = 39  # faiss warns below this; k-means is poorly fitted


@dataclass(frozen=True)
class IndexConfig:
    """factory: a faiss factory string, or "" to choose by size (`choose_factory`).
    flat_below: sets smaller than this use exact search (fast enough and recall 1.0).
    train_sample: most vectors used to train (a seeded sample); at least 39 per centroid.
    add_batch: vectors added per call, so memory stays bounded.
    nprobe / ef_search: search-time settings stored in the manifest (0 = choose by nlist).
    """

    factory: str = ""
    flat_below: int = 5_000
    train_sample: int = 200_000
    add_batch: int = 65_536
    nprobe: int = 0
    ef_search: int = 0
    seed: int = 1234


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.Index | DiskRefinedIndex
    factory: str
    train_size: int
    seconds: float
    search_params: dict[str, int]
    notes: list[str] = field(default_factory=list)


def _nlist_for(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def choose_factory(n: int, dim: int, config: IndexConfig = IndexConfig()) -> str:
    """Exact below `flat_below`; IVF-Flat up to 200k; then IVF-HNSW + 4-bit fast-scan PQ with an
    exact refine from the vectors on disk (`DiskRefine`: 24 B of codes + 8 B of row id resident
    per vector at d=384, where `RFlat` kept 1,585 B). OPQ is left out: at 1M it tripled build
    time (359 s vs 101 s) for under 0.01 recall (bench/index.py)."""
    if config.factory:
        return config.factory
    if n < config.flat_below or _nlist_for(n) < 8:
        return "IDMap,Flat"
    nlist = _nlist_for(n)
    if n < 200_000:
        return f"IVF{nlist},Flat"
    m = 48 if dim % 48 == 0 else 16  # 4-bit fast-scan PQ sub-quantizers
    return f"IVF{nlist}_HNSW32,PQ{m}x4fs{MARKER}"


def nlist_of(factory: str) -> int | None:
    """The IVF list count a factory string names (None: not an IVF index)."""
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def _fit_nlist(factory: str, n_train: int, notes: list[str]) -> str:
    """Lower an IVF's nlist to what the training points support, or fall back to exact search."""
    nlist = nlist_of(factory)
    if nlist is None:
        return factory
    supported = n_train // MIN_POINTS_PER_CENTROID
    if nlist <= supported:
        return factory
    if supported < 2:
        notes.append(f"{n_train} training vectors cannot train {factory}; using exact search")
        return "IDMap,Flat"
    notes.append(f"nlist lowered from {nlist} to {supported}: only {n_train} training vectors")
    return re.sub(r"IVF\d+", f"IVF{supported}", factory, count=1)


def validate_vectors(vectors: np.ndarray, ids: np.ndarray, dim: int) -> np.ndarray:
    """Contiguous float32 (n, dim) or a clear error naming how many vectors are bad."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise IndexBuildError(f"vectors have shape {vectors.shape}; the index expects (n, {dim})")
    if len(ids) != len(vectors):
        raise IndexBuildError(f"{len(ids)} ids for {len(vectors)} vectors")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        sample = ", ".join(str(int(i)) for i in np.asarray(ids)[bad][:5])
        raise IndexBuildError(f"{int(bad.sum())} of {len(vectors)} vectors contain NaN or Inf "
                              f"(ids {sample}...); refusing to build")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def default_search_params(factory: str, config: IndexConfig) -> dict[str, int]:
    """Search settings measured to give recall@10 >= 0.95 (bench/index.py): nlist/8 lists for
    IVF-Flat; for the refined PQ index 64 lists and 64x re-ranking (a refine factor of 4 capped
    recall at 0.72-0.83 on 1M vectors whatever nprobe was)."""
    params: dict[str, int] = {}
    nlist = nlist_of(factory)
    refined = "RFlat" in factory or "Refine" in factory
    if nlist is not None:
        params["nprobe"] = config.nprobe or min(nlist, 64 if refined else max(8, nlist // 8))
    if "HNSW" in factory and nlist is not None:  # an IVF whose coarse quantizer is a graph
        params["quantizer_efSearch"] = config.ef_search or 2 * params["nprobe"]
    elif "HNSW" in factory:  # the graph is the index
        params["efSearch"] = config.ef_search or 64
    if refined:
        params["k_factor_rf"] = 64
    return params


def apply_search_params(index: faiss.Index | DiskRefinedIndex, params: dict[str, int]) -> None:
    if isinstance(index, DiskRefinedIndex):  # its refine depth is ours; the rest is FAISS's
        index.k_factor = int(params.get("k_factor_rf", index.k_factor))
        params = {name: value for name, value in params.items() if name != "k_factor_rf"}
        index = index.coarse
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def build_index(vectors: np.ndarray, ids: np.ndarray, config: IndexConfig = IndexConfig()) -> BuiltIndex:
    started = time.perf_counter()
    if len(vectors) == 0:
        raise IndexBuildError("no vectors: an empty retrieval set has nothing to index")
    dim = np.asarray(vectors).shape[1] if np.asarray(vectors).ndim == 2 else -1
    vectors = validate_vectors(vectors, ids, dim)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    notes: list[str] = []
    n_train = min(len(vectors), config.train_sample)
    factory = _fit_nlist(choose_factory(len(vectors), dim, config), n_train, notes)
    try:
        index = faiss.index_factory(dim, coarse_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"bad faiss factory string {factory!r}: {str(exc).splitlines()[-1]}") from exc
    if not index.is_trained:
        sample = np.random.default_rng(config.seed).choice(len(vectors), n_train, replace=False)
        index.train(vectors[np.sort(sample)])
    else:
        n_train = 0
    for start in range(0, len(vectors), config.add_batch):
        if is_disk_refined(factory):  # ids are row numbers of the vectors file
            index.add(vectors[start:start + config.add_batch])
        else:
            index.add_with_ids(vectors[start:start + config.add_batch], ids[start:start + config.add_batch])
    built = DiskRefinedIndex(index, vectors, ids) if is_disk_refined(factory) else index
    params = default_search_params(factory, config)
    apply_search_params(built, params)
    return BuiltIndex(built, factory, n_train, time.perf_counter() - started, params, notes)
