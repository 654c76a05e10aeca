"""Index a retrieval-set version: build, record in the catalog, publish atomically, measure.

The build takes the cheapest correct route: when the new version only lost a few chunks
(exclusions) since the published index's version, that index minus their ids
(`incremental`); otherwise, or when recall after removal fails the check, a full build.
The manifest names the route and why. The build is recorded in the catalog with its index and
manifest digests (which is what makes it trusted, for this set only) before CURRENT flips, and
measured on the in-memory index right after: recall@10 against exact search and latency. Each
run first cleans up after a publisher that was killed midway, so a rerun ends as an
uninterrupted run would have. Every route ends in `publish_build`, the sharded one
(`shards.publish_merged`) included: one recall tuning, one manifest, one trust record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from retro_ops.catalog import Catalog, RetrievalSetVersionInfo
from retro_ops.features.spaces import EmbeddingSpace
from retro_ops.features.store import FeatureStore
from retro_ops.ids import sha256_hex
from retro_ops.retrieval.index.disk_refine import npy_sha256, sidecar_arrays
from retro_ops.retrieval.index.build import BuiltIndex, IndexConfig, apply_search_params, build_index
from retro_ops.retrieval.index.incremental import (
    IncrementalConfig, Route, count_blocker, full_route, incremental_build,
)
from retro_ops.retrieval.index.quality import IndexQuality, evaluate_index
from retro_ops.retrieval.index.tuning import fixed_by, tune_to_recall
from retro_ops.errors import IndexIntegrityError, RetrievalSetError
from retro_ops.retrieval.index.publish import (
    CrashMode, CrashPoint, IndexManifest, PublishedIndex, current_build, index_root, load_current,
    publish_index, read_manifest, recover_publish, serialize,
)
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors


@dataclass(frozen=True)
class IndexBuildResult:
    version: RetrievalSetVersionInfo
    manifest: IndexManifest
    quality: IndexQuality
    build_id: int
    published: PublishedIndex | None  # None: recall below min_recall, the old index stays current
    reused: bool = False  # the current index was built from this version and config already


def build_key(version: RetrievalSetVersionInfo, config: IndexConfig) -> str:
    return sha256_hex(json.dumps({"set_version": version.id, "set_digest": version.digest,
                                  "config": asdict(config), "faiss": faiss.__version__},
                                 sort_keys=True))[:24]


def _reuse_current(catalog: Catalog, store: FeatureStore, root: Path, version: RetrievalSetVersionInfo,
                   key: str, dim: int, eval_queries: int) -> IndexBuildResult | None:
    """The published index when it was built from this very version and config (and still
    passes every integrity check); None means build anew."""
    try:
        found = current_build(root)
        if found is None or read_manifest(root, found[0]).build_key != key:
            return None
        index, manifest = load_current(root, retrieval_set=version.retrieval_set,
                                       expected_ntotal=version.n_chunks,
                                       is_trusted=catalog.is_trusted_index)
    except IndexIntegrityError:
        return None  # damaged pointer, manifest or index, or untrusted: rebuild, never serve it
    apply_search_params(index, manifest.search_params)
    ids, vectors = retrieval_set_vectors(store, version, dim)
    quality = evaluate_index(index, vectors, ids, queries=eval_queries)
    record = catalog.trusted_index_build(version.retrieval_set, version.id, manifest.sha256,
                                         manifest.digest())
    if not record.published:  # its publisher died after the flip, before recording it
        catalog.mark_index_published(record.id, str(root / found[0]))
    return IndexBuildResult(version, manifest, quality, record.id,
                            PublishedIndex(found[0], root / found[0], manifest), reused=True)


def _incremental(catalog: Catalog, root: Path, version: RetrievalSetVersionInfo, config: IndexConfig,
                 incremental: IncrementalConfig, ids) -> tuple[BuiltIndex | None, Route]:
    """The published index minus the ids the new version dropped, or (None, why not)."""
    try:
        found = current_build(root)
        if found is None:
            return None, full_route("no published index to remove ids from", len(ids))
        manifest = read_manifest(root, found[0])
        old = catalog.retrieval_set_version(manifest.retrieval_set_version_id)
        if old.embedding_space_id != version.embedding_space_id:
            return None, full_route("the embedding space changed", len(ids))
        if manifest.build_key != build_key(old, config):
            return None, full_route("the published index was built with another configuration", len(ids))
        reason = count_blocker(manifest, len(ids), incremental)  # before loading a large index
        if reason:
            return None, full_route(reason, len(ids))
        index, manifest = load_current(root, retrieval_set=version.retrieval_set,
                                       expected_ntotal=old.n_chunks, is_trusted=catalog.is_trusted_index)
    except (IndexIntegrityError, RetrievalSetError) as error:
        return None, full_route(f"the published index cannot be reused ({error})", len(ids))
    return incremental_build(index, manifest, ids, incremental)


#: (the failed build's quality) -> (a build to take instead, its route)
Fallback = Callable[[IndexQuality], tuple[BuiltIndex, Route]]


def _full_build_instead(ids: np.ndarray, vectors: np.ndarray, config: IndexConfig,
                        min_recall: float) -> Fallback:
    """A full build, for when the published index minus removed ids fails the recall check."""
    def fallback(quality: IndexQuality) -> tuple[BuiltIndex, Route]:
        return build_index(vectors, ids, config), full_route(
            f"recall@{quality.k} {quality.recall_at_k:.3f} after removing ids is below {min_recall}", len(ids))
    return fallback


def index_retrieval_set(
    catalog: Catalog, store: FeatureStore, indices_dir: Path, retrieval_set: str, dim: int, *,
    config: IndexConfig = IndexConfig(), incremental: IncrementalConfig = IncrementalConfig(),
    run_id: str | None = None, eval_queries: int = 500, min_recall: float = 0.0,
    crash_at: CrashPoint | None = None, crash_mode: CrashMode = "raise",
) -> IndexBuildResult:
    """Build (by the cheapest correct route) and measure; publish only when recall@10 >=
    min_recall (a failed build is recorded, unpublished, and the previous index keeps serving)."""
    version = catalog.latest_retrieval_set_version(retrieval_set)
    root, key = index_root(indices_dir, retrieval_set), build_key(version, config)
    recover_publish(root)
    if crash_at is None:
        reused = _reuse_current(catalog, store, root, version, key, dim, eval_queries)
        if reused is not None:
            return reused
    ids, vectors = retrieval_set_vectors(store, version, dim)
    built, route = _incremental(catalog, root, version, config, incremental, ids)
    fallback = None
    if built is None:
        built = build_index(vectors, ids, config)
    else:  # the published index minus removed ids, unless its recall fails the check
        fallback = _full_build_instead(ids, vectors, config, min_recall)
    return publish_build(catalog, root, version, built, route, ids, vectors, key=key, config=config,
                         eval_queries=eval_queries, min_recall=min_recall, fallback=fallback,
                         run_id=run_id, crash_at=crash_at, crash_mode=crash_mode)


def index_manifest(built: BuiltIndex, data: bytes, extra: Mapping[str, np.ndarray],
                   version: RetrievalSetVersionInfo, config: IndexConfig, *, route: Route,
                   key: str) -> IndexManifest:
    """The one place an index manifest is made, so the routes cannot drift apart in what they
    record. data: the serialized index; extra: its sidecar arrays (`sidecar_arrays`)."""
    return IndexManifest(
        factory=built.factory, metric="inner_product", dim=int(built.index.d), ntotal=int(built.index.ntotal),
        embedding_space_id=version.embedding_space_id, retrieval_set=version.retrieval_set,
        retrieval_set_version_id=version.id, retrieval_set_digest=version.digest,
        train_size=built.train_size, sha256=sha256_hex(data), index_bytes=len(data),
        build_seconds=round(built.seconds, 3), search_params=built.search_params,
        faiss_version=faiss.__version__, created_at=datetime.now(UTC).isoformat(),
        notes=[*built.notes, route.note()], build_key=key, route=route.name,
        full_build_ntotal=route.full_build_ntotal,
        extra_files={name: npy_sha256(array) for name, array in extra.items()}, config=asdict(config),
    )


def publish_build(catalog: Catalog, root: Path, version: RetrievalSetVersionInfo, built: BuiltIndex,
                  route: Route, ids: np.ndarray, vectors: np.ndarray, *, key: str, config: IndexConfig,
                  eval_queries: int, min_recall: float, fallback: Fallback | None = None,
                  run_id: str | None = None, crash_at: CrashPoint | None = None,
                  crash_mode: CrashMode = "raise") -> IndexBuildResult:
    """Where every route to an index (single process, incremental, sharded and merged) ends:
    search deepened until recall@10 passes the gate (`tuning`), or, when it still fails and
    there is a `fallback`, that build instead; then the manifest, the catalog's record (its
    trust record) and, only when recall@10 >= min_recall, the atomic publish. A build below the
    gate is recorded unpublished and the previous index keeps serving."""
    built, quality = _tuned(built, ids, vectors, config, min_recall, eval_queries)
    if quality.recall_at_k < min_recall and fallback is not None:
        built, route = fallback(quality)
        built, quality = _tuned(built, ids, vectors, config, min_recall, eval_queries)
    data, extra = serialize(built.index), sidecar_arrays(built.index)
    manifest = index_manifest(built, data, extra, version, config, route=route, key=key)
    build_id = catalog.record_index_build(
        version.id, build_dir="", factory=manifest.factory, ntotal=manifest.ntotal,
        sha256=manifest.sha256, manifest_sha256=manifest.digest(),
        manifest={**manifest.__dict__, **quality.as_metadata()}, run_id=run_id)
    if quality.recall_at_k < min_recall:
        return IndexBuildResult(version, manifest, quality, build_id, None)
    published = publish_index(root, data, manifest, crash_at=crash_at, crash_mode=crash_mode, extra=extra)
    catalog.mark_index_published(build_id, str(published.path))
    return IndexBuildResult(version, manifest, quality, build_id, published)


def _tuned(built: BuiltIndex, ids: np.ndarray, vectors: np.ndarray, config: IndexConfig, min_recall: float,
           eval_queries: int) -> tuple[BuiltIndex, IndexQuality]:
    return tune_to_recall(built, vectors, ids, min_recall=min_recall, queries=eval_queries,
                          fixed=fixed_by(config))


def publish_retrieval_set(catalog: Catalog, store: FeatureStore, indices_dir: Path, retrieval_set: str,
                          space: EmbeddingSpace) -> IndexBuildResult:
    """Pin the set's current chunks as a version and build, measure and publish its index,
    outside Dagster (tests, benchmarks, scripts); the `retrieval_set` and `faiss_index` assets
    run the same two steps."""
    build_retrieval_set_version(catalog, store, retrieval_set, space)
    return index_retrieval_set(catalog, store, indices_dir, retrieval_set, space.dim)
