"""A retrieval set's index built in shards: trained once on a sample, filled per shard in
parallel, merged (how the RETRO Pile and Megatron builds scale FAISS past one machine's time).

The training sample is drawn exactly as `build.build_index` draws it (same seed, same
positions in chunk-id order), so the merged index has the same quantizer as a single-process
build and its lists hold the same vectors: the two return the same neighbours. Shards follow the
feature shards (`features.shards`, by document), so a shard's vectors come from one process.
Each file is written by `durable.write_atomic` (temp, fsync, rename): a killed filler leaves no
half shard.

Merging: `merge_from` in memory (IVF lists moved, flat codes appended), or, for an IVF larger
than memory, `faiss.contrib.ondisk.merge_ondisk` into one `OnDiskInvertedLists` file. A refine
stage (`RFlat`) cannot be merged by FAISS: such factories are refused here by name.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from retro_ops.catalog import Catalog, RetrievalSetVersionInfo
from retro_ops.durable import write_atomic
from retro_ops.errors import IndexBuildError
from retro_ops.features.shards import ShardSpec, all_shards, shard_of
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.index.build import (
    BuiltIndex, IndexConfig, _fit_nlist, apply_search_params, choose_factory, default_search_params,
    validate_vectors,
)
from retro_ops.retrieval.index.incremental import full_route
from retro_ops.retrieval.index.publish import index_root, recover_publish
from retro_ops.retrieval.index.route import IndexBuildResult, build_key, publish_build
from retro_ops.retrieval.sets import retrieval_set_vectors

TRAINED = "trained.faiss"


@dataclass(frozen=True)
class TrainedIndex:
    """An empty, trained index (serialized) and how it was chosen."""

    data: bytes
    factory: str
    train_size: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def shards_dir(indices_dir: Path, version: RetrievalSetVersionInfo) -> Path:
    """Where one set version's trained index and shard files live (they are build inputs,
    not served: the merged index is published like any other build)."""
    return index_root(indices_dir, version.retrieval_set) / "shards" / version.digest[:16]


def save_trained(folder: Path, trained: TrainedIndex) -> Path:
    """`trained.faiss` + `trained.json` (factory, sample size, notes), each written atomically,
    the description last: a reader that finds it finds the index too."""
    write_atomic(folder / TRAINED, trained.data)
    about = {k: v for k, v in asdict(trained).items() if k != "data"}
    write_atomic(folder / "trained.json", json.dumps(about, sort_keys=True).encode())
    return folder / TRAINED


def load_trained(folder: Path) -> TrainedIndex:
    about = folder / "trained.json"
    if not about.exists():
        raise IndexBuildError(f"no trained index in {folder}: materialize index_training first")
    return TrainedIndex(data=(folder / TRAINED).read_bytes(), **json.loads(about.read_text()))


def shard_file(folder: Path, shard: ShardSpec) -> Path:
    return folder / f"shard-{shard.key}.faiss"


def _members(store: FeatureStore, version: RetrievalSetVersionInfo) -> pa.Table:
    return store.members(version.digest, ["chunk_id", "doc_id", "content_hash"]).sort_by("chunk_id")


def train_index(store: FeatureStore, version: RetrievalSetVersionInfo, dim: int,
                config: IndexConfig = IndexConfig()) -> TrainedIndex:
    """Train the set's index once, reading only the sampled vectors."""
    started = time.perf_counter()
    members = _members(store, version)
    n = members.num_rows
    if n == 0:
        raise IndexBuildError(f"retrieval set {version.retrieval_set!r} version {version.id} has no members")
    notes: list[str] = []
    n_train = min(n, config.train_sample)
    factory = _fit_nlist(choose_factory(n, dim, config), n_train, notes)
    if "RFlat" in factory or "Refine" in factory:
        raise IndexBuildError(f"factory {factory!r} has a refine stage, which FAISS cannot merge "
                              "from shards; pass a factory without RFlat/Refine")
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"bad faiss factory string {factory!r}: {str(exc).splitlines()[-1]}") from exc
    if index.is_trained:
        n_train = 0
    else:
        sample = np.sort(np.random.default_rng(config.seed).choice(n, n_train, replace=False))
        hashes = members.column("content_hash").take(pa.array(sample))
        vectors = store.vectors_of(version.embedding_space_id, dim, hashes, version.embeddings_lance_version)
        index.train(validate_vectors(vectors, sample, dim))
    return TrainedIndex(faiss.serialize_index(index).tobytes(), factory, n_train,
                        time.perf_counter() - started, notes)


def shard_vectors(store: FeatureStore, version: RetrievalSetVersionInfo, dim: int,
                  shard: ShardSpec) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, vectors) of the set version's members whose document is in `shard`."""
    members = _members(store, version)
    docs = members.column("doc_id").to_pylist()
    mine = members.filter(pa.array([shard_of(d, shard.count) == shard.index for d in docs], pa.bool_()))
    vectors = store.vectors_of(version.embedding_space_id, dim, mine.column("content_hash"),
                               version.embeddings_lance_version)
    return mine.column("chunk_id").to_numpy(), vectors


def fill_shard(trained: bytes, ids: np.ndarray, vectors: np.ndarray, *, add_batch: int = 65_536) -> bytes:
    """The trained index with this shard's vectors added, serialized."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    vectors = validate_vectors(vectors, ids, index.d)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for start in range(0, len(vectors), add_batch):
        index.add_with_ids(vectors[start:start + add_batch], ids[start:start + add_batch])
    return faiss.serialize_index(index).tobytes()


def merge_shards(trained: bytes, shards: list[bytes], factory: str,
                 config: IndexConfig = IndexConfig()) -> faiss.Index:
    """One index holding every shard's vectors (in memory), with the default search settings.
    The target is deserialized like the shards, so FAISS sees the same concrete types."""
    merged = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    for data in shards:
        merged.merge_from(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), 0)
    apply_search_params(merged, default_search_params(factory, config))
    return merged


def merge_shards_ondisk(trained_path: Path, shard_paths: list[Path], ivfdata_path: Path,
                        factory: str, config: IndexConfig = IndexConfig()) -> faiss.Index:
    """An IVF index whose lists live in one `OnDiskInvertedLists` file (memory-mapped), for
    sets larger than memory. The returned index refers to `ivfdata_path` by absolute path."""
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(str(trained_path))
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        raise IndexBuildError(f"on-disk merging needs a bare IVF index, not {factory!r}")
    index = faiss.downcast_index(index)
    merge_ondisk(index, [str(p) for p in shard_paths], str(ivfdata_path))
    apply_search_params(index, default_search_params(factory, config))
    return index


def publish_merged(catalog: Catalog, store: FeatureStore, indices_dir: Path,
                   version: RetrievalSetVersionInfo, merged: faiss.Index, trained: TrainedIndex, *,
                   shards: int, seconds: float, config: IndexConfig = IndexConfig(),
                   run_id: str | None = None, eval_queries: int = 500,
                   min_recall: float = 0.0) -> IndexBuildResult:
    """Tune, record, measure and publish a merged index through the single-process route's own
    `publish_build` (same manifest, recall tuning, trust record and atomic CURRENT flip), so the
    retriever serves either."""
    if merged.ntotal != version.n_chunks:
        raise IndexBuildError(f"merged index holds {merged.ntotal} vectors; retrieval set "
                              f"{version.retrieval_set!r} version {version.id} has {version.n_chunks}")
    ids, vectors = retrieval_set_vectors(store, version, merged.d)
    built = BuiltIndex(merged, trained.factory, trained.train_size, seconds,
                       default_search_params(trained.factory, config), list(trained.notes))
    root = index_root(indices_dir, version.retrieval_set)
    recover_publish(root)
    return publish_build(catalog, root, version, built,
                         full_route(f"trained once, filled in {shards} shards, merged", len(ids)), ids, vectors,
                         key=f"sharded-{shards}-{build_key(version, config)}", config=config,
                         eval_queries=eval_queries, min_recall=min_recall, run_id=run_id)


# The three steps of the sharded route, one per asset (`assets/sharded.py`), each on the set's
# latest version: train once, fill each shard (in parallel, one process each), merge and publish.

def train_and_save(catalog: Catalog, store: FeatureStore, indices_dir: Path, retrieval_set: str,
                   config: IndexConfig = IndexConfig()) -> tuple[RetrievalSetVersionInfo, TrainedIndex, Path]:
    """(the version, its trained index, where it was saved): the training step."""
    version = catalog.latest_retrieval_set_version(retrieval_set)
    trained = train_index(store, version, catalog.embedding_space_dim(version.embedding_space_id), config)
    return version, trained, save_trained(shards_dir(indices_dir, version), trained)


@dataclass(frozen=True)
class FilledShard:
    version: RetrievalSetVersionInfo
    path: Path
    vectors: int
    bytes: int
    seconds: float


def fill_and_save(catalog: Catalog, store: FeatureStore, indices_dir: Path, retrieval_set: str,
                  shard: ShardSpec) -> FilledShard:
    """The trained index filled with one shard's vectors, written atomically beside it."""
    started = time.perf_counter()
    version = catalog.latest_retrieval_set_version(retrieval_set)
    folder = shards_dir(indices_dir, version)
    ids, vectors = shard_vectors(store, version, catalog.embedding_space_dim(version.embedding_space_id), shard)
    data = fill_shard(load_trained(folder).data, ids, vectors)
    write_atomic(shard_file(folder, shard), data)
    return FilledShard(version, shard_file(folder, shard), len(ids), len(data), time.perf_counter() - started)


def merge_and_publish(catalog: Catalog, store: FeatureStore, indices_dir: Path, retrieval_set: str,
                      n_shards: int, *, config: IndexConfig = IndexConfig(), run_id: str | None = None,
                      eval_queries: int = 500, min_recall: float = 0.0) -> IndexBuildResult:
    """Every shard file merged into one index, published as the set's index (`publish_merged`);
    FileNotFoundError names the shards not filled yet."""
    started = time.perf_counter()
    version = catalog.latest_retrieval_set_version(retrieval_set)
    folder = shards_dir(indices_dir, version)
    trained = load_trained(folder)
    files = [shard_file(folder, s) for s in all_shards(n_shards)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"shards not filled yet: {', '.join(missing)} (materialize index_shard)")
    merged = merge_shards(trained.data, [f.read_bytes() for f in files], trained.factory, config)
    return publish_merged(catalog, store, indices_dir, version, merged, trained, shards=n_shards,
                          seconds=time.perf_counter() - started, config=config, run_id=run_id,
                          eval_queries=eval_queries, min_recall=min_recall)
