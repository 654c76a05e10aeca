"""The cheapest correct index for a set that only lost chunks: the published index minus their ids.

Exclusions make a new retrieval-set version that holds a subset of the old one's chunks. Its
index can then be a copy of the published index with those ids removed, in well under a second
where a full build retrains for minutes, as long as few were removed since the last full build
(an IVF's lists were fitted to the data it was trained on) and recall still passes the check.

Why structure by structure: `IndexIDMap.remove_ids` assumes the index inside renumbers the
vectors after a removed one, which only flat storage does. Over an IVF it leaves every later
hit mapped to the wrong chunk (measured: 0% of vectors found themselves), and `IndexRefine`
and HNSW refuse outright. So the id map is compacted here and an IVF's list ids renumbered,
for the structures whose layout is known (flat codes, IVF on in-memory lists, refine over
both); anything else gets a full rebuild, with the reason in the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from retro_ops.retrieval.index.disk_refine import DiskRefinedIndex
from retro_ops.retrieval.index.build import BuiltIndex, apply_search_params
from retro_ops.retrieval.index.publish import IndexManifest

RouteName = Literal["full", "incremental"]
_IN_MEMORY_LISTS = ("ArrayInvertedLists", "BlockInvertedLists")  # ids are a plain array per list


@dataclass(frozen=True)
class IncrementalConfig:
    """enabled: try removing ids from a copy of the published index before building anew.
    max_removed_fraction: most vectors removed since the last full build, as a fraction of that
    build's size (removals add up across versions); beyond it a full build retrains on what is
    left, because IVF centroids and PQ codebooks fitted to the old data drift from the new.
    """

    enabled: bool = True
    max_removed_fraction: float = 0.05


@dataclass(frozen=True)
class Route:
    """How an index was made and why; `full_build_ntotal` is the size of the last full build it
    descends from (itself, for a full build), against which removals are counted."""

    name: RouteName
    reason: str
    full_build_ntotal: int

    def note(self) -> str:
        return f"{self.name} build: {self.reason}"


def removal_blocker(index: faiss.Index) -> str | None:
    """Why ids cannot be removed correctly from this structure, or None when they can."""
    if isinstance(index, DiskRefinedIndex):  # codes numbered by row, like an id map's inner index
        return _position_blocker(index.coarse)
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 too
        return _position_blocker(index.index)
    if isinstance(index, faiss.IndexIVF):
        return _lists_blocker(index)
    return f"{type(index).__name__} holds no chunk ids that can be removed in place"


def _position_blocker(index: faiss.Index) -> str | None:
    """Why vectors cannot be removed by position (renumbering the rest) from an inner index."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlatCodes):
        return None
    if isinstance(index, faiss.IndexRefine):
        return _position_blocker(index.base_index) or _position_blocker(index.refine_index)
    if isinstance(index, faiss.IndexIVF):
        return _lists_blocker(index)
    return f"no known-correct way to remove vectors from {type(index).__name__}"


def _lists_blocker(ivf: faiss.IndexIVF) -> str | None:
    kind = type(faiss.downcast_InvertedLists(ivf.invlists)).__name__
    if kind not in _IN_MEMORY_LISTS:
        return f"inverted lists of type {kind} are not renumbered in place"
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        return "an IVF with a direct map cannot remove ids"
    return None


def _list_ids(ivf: faiss.IndexIVF) -> list[np.ndarray]:
    """Writable views of each list's ids (in-memory lists only: see `_lists_blocker`)."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    views = []
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        views.append(faiss.rev_swig_ptr(lists.get_ids(number), size) if size else np.empty(0, np.int64))
    return views


def held_ids(index: faiss.Index) -> np.ndarray:
    """Every id the index holds, sorted (a structure `removal_blocker` accepts)."""
    if isinstance(index, DiskRefinedIndex):
        return np.sort(np.asarray(index.ids))
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 too
        return np.sort(faiss.vector_to_array(index.id_map))
    return np.sort(np.concatenate(_list_ids(index)))


def _positions_aligned(index: faiss.Index) -> bool:
    """Whether an inner index's vectors are numbered exactly 0..ntotal-1, as an id map (or a
    refine stage) over it assumes: flat storage always is; an IVF's list ids must be checked."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return (index.base_index.ntotal == index.refine_index.ntotal == index.ntotal
                and _positions_aligned(index.base_index) and _positions_aligned(index.refine_index))
    if isinstance(index, faiss.IndexIVF):
        return bool(np.array_equal(np.sort(np.concatenate(_list_ids(index))), np.arange(index.ntotal)))
    return True


def _aligned(index: faiss.Index | DiskRefinedIndex) -> bool:
    """Whether every id still maps to its own vector after a removal (see `_positions_aligned`)."""
    if isinstance(index, DiskRefinedIndex):
        return (len(index.vectors) == len(index.ids) == index.coarse.ntotal
                and _positions_aligned(index.coarse))
    inner = faiss.downcast_index(index)
    return _positions_aligned(inner.index) if isinstance(inner, faiss.IndexIDMap) else True


def _remove_positions(index: faiss.Index, positions: np.ndarray) -> None:
    """Remove the vectors at sorted internal `positions`, renumbering the rest 0..n-1 as flat
    storage does, so an id map (or a refine stage) over this index stays aligned."""
    index = faiss.downcast_index(index)
    selector = faiss.IDSelectorBatch(positions)
    if isinstance(index, faiss.IndexRefine):
        _remove_positions(index.base_index, positions)
        _remove_positions(index.refine_index, positions)
        index.ntotal = index.base_index.ntotal
    elif isinstance(index, faiss.IndexIVF):
        index.remove_ids(selector)  # list entries keep their old positions: shift them down
        for ids in _list_ids(index):
            ids -= np.searchsorted(positions, ids)
    else:
        index.remove_ids(selector)  # flat codes compact themselves


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove `ids` from `index` in place (pass a copy); returns how many were removed. The
    structure must pass `removal_blocker`."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    before = index.ntotal
    if isinstance(index, DiskRefinedIndex):  # rows of codes, vectors and ids drop together
        gone = np.flatnonzero(np.isin(index.ids, ids)).astype(np.int64)
        _remove_positions(index.coarse, gone)
        index.vectors = np.delete(np.asarray(index.vectors), gone, axis=0)
        index.ids = np.delete(np.asarray(index.ids), gone)
        return before - index.ntotal
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 too
        id_map = faiss.vector_to_array(index.id_map)
        gone = np.isin(id_map, ids)
        _remove_positions(index.index, np.flatnonzero(gone).astype(np.int64))
        faiss.copy_array_to_vector(np.ascontiguousarray(id_map[~gone]), index.id_map)
        index.ntotal = int((~gone).sum())
        if isinstance(index, faiss.IndexIDMap2):
            index.construct_rev_map()
    else:
        index.remove_ids(faiss.IDSelectorBatch(ids))  # an IVF stores the ids in its lists
    return before - index.ntotal


def full_route(reason: str, ntotal: int) -> Route:
    return Route("full", reason, ntotal)


def count_blocker(manifest: IndexManifest, n_new: int, config: IncrementalConfig) -> str | None:
    """Why the published index cannot become the new one by removal, judged from sizes alone
    (before loading it); None when it may."""
    if not config.enabled:
        return "the incremental route is disabled"
    if n_new >= manifest.ntotal:
        return f"the new version holds {n_new} chunks, the published index {manifest.ntotal}: nothing to remove"
    base = manifest.full_build_ntotal or manifest.ntotal
    removed = base - n_new
    if removed > config.max_removed_fraction * base:
        return (f"{removed} of {base} vectors removed since the last full build "
                f"({removed / base:.1%} > {config.max_removed_fraction:.1%}): retraining")
    return None


def incremental_build(index: faiss.Index, manifest: IndexManifest, new_ids: np.ndarray,
                      config: IncrementalConfig) -> tuple[BuiltIndex | None, Route]:
    """Remove from `index` (the caller's own copy of the published index, built from
    `manifest`) every id not in `new_ids`; (None, why) when that is not a correct route."""
    started = time.perf_counter()
    reason = count_blocker(manifest, len(new_ids), config) or removal_blocker(index)
    if reason:
        return None, full_route(reason, len(new_ids))
    old_ids, new_ids = held_ids(index), np.sort(np.asarray(new_ids, dtype=np.int64))
    added = np.setdiff1d(new_ids, old_ids, assume_unique=True)
    if len(added):
        return None, full_route(f"{len(added)} chunks were added since the published version", len(new_ids))
    removed = np.setdiff1d(old_ids, new_ids, assume_unique=True)
    remove_ids(index, removed)
    aligned = _aligned(index)
    if not (aligned and np.array_equal(held_ids(index), new_ids)):  # never publish a mismatch
        return None, full_route("the index after removal did not hold exactly the new chunk ids", len(new_ids))
    apply_search_params(index, manifest.search_params)
    base = manifest.full_build_ntotal or manifest.ntotal
    note = (f"removed {len(removed)} ids from build {manifest.sha256[:12]} "
            f"({base - len(new_ids)} of {base} since the last full build)")
    built = BuiltIndex(index, manifest.factory, manifest.train_size, time.perf_counter() - started,
                       dict(manifest.search_params), [])
    return built, Route("incremental", note, base)
