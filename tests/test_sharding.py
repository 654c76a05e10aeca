"""Scale-out: shards are Dagster partitions run at once (a run and its process each), and the
sharded path (chunk + embed per shard, index trained once, filled per shard, merged) gives what
the single-process path gives: the same chunk ids, the same vectors within float tolerance and
the same neighbours on a fixed query sample (with nprobe < nlist, so the quantizer must match).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import faiss
import numpy as np
import pyarrow.compute as pc
import pytest

from assets.definitions import ALL_ASSETS, default_resources
from assets.launch import FEATURES_JOB, launch_shards, materialize_corpus
from assets.instance import dagster_instance, ensure_partition
from assets.partitions import RETRIEVAL_SET_PARTITIONS
from assets.sharded import shard_count, sharded_assets
from retro_ops.catalog import Catalog
from retro_ops.errors import IndexBuildError
from retro_ops.features import pipeline
from retro_ops.features.shards import ShardSpec, all_shards, shard_of, threads_per_shard
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS_SCHEMA
from retro_ops.retrieval.index.build import IndexConfig, build_index
from retro_ops.retrieval.index.publish import MANIFEST_FILE, IndexManifest, index_root, load_current
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.index.shards import fill_and_save, merge_and_publish, train_and_save, train_index
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors
from retro_ops.settings import Settings

N_SHARDS = 2
FACTORY = {"factory": "IVF3,Flat", "nprobe": 1}  # one list of three searched: a different quantizer shows
SHARD_STEPS = {"chunk_shard", "embedding_shard", "index_training", "index_shard", "sharded_faiss_index"}


def test_shards_split_documents_stably():
    ids = [f"{i:032x}" for i in range(1000)]
    for count in (1, 2, 7):
        shards = all_shards(count)
        assert sorted(d for s in shards for d in s.select(ids)) == sorted(ids)  # each doc in one shard
        assert min(len(s.select(ids)) for s in shards) > 0.8 * len(ids) / count  # roughly even
    assert [shard_of(d, 4) for d in ids[:6]] == [0, 3, 1, 2, 3, 3]  # sha256-based: same everywhere
    assert ShardSpec.parse("1-of-4") == ShardSpec(1, 4) and ShardSpec(1, 4).key == "1-of-4"
    with pytest.raises(ValueError, match="shard key '1/4': expected INDEX-of-COUNT"):
        ShardSpec.parse("1/4")
    with pytest.raises(ValueError, match="shard 4 of 4: need 0 <= index < count"):
        ShardSpec(4, 4)
    with pytest.raises(ValueError, match="RETRO_OPS_SHARDS='0': a whole number from 1 to 4096"):
        shard_count({"RETRO_OPS_SHARDS": "0"})


def test_shards_at_once_share_the_cores(monkeypatch: pytest.MonkeyPatch):
    from assets.sharded import PARALLEL_ENV, EmbeddingShardConfig

    assert [threads_per_shard(n, cores=16) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    assert threads_per_shard(2, cores=2) == 1 and threads_per_shard(0, cores=2) == 2
    monkeypatch.delenv(PARALLEL_ENV, raising=False)
    cores = threads_per_shard(1)
    assert EmbeddingShardConfig().threads(2) == max(1, cores // 2)  # every shard at once by default
    monkeypatch.setenv(PARALLEL_ENV, "1")
    assert EmbeddingShardConfig().threads(4) == cores  # one at a time: all the cores
    assert EmbeddingShardConfig(torch_threads=3).threads(4) == 3


def test_refine_stage_is_refused(ws):
    version = ws.catalog.latest_retrieval_set_version("small")
    with pytest.raises(IndexBuildError, match="has a refine stage, which FAISS cannot merge"):
        train_index(ws.store, version, 384, IndexConfig(factory="IDMap,IVF4,Flat,RFlat"))


#: what differs between two builds of the same inputs: when, how long, which route (key and note)
#: and the bytes (a merged IVF lists the same vectors in shard order, not chunk-id order)
PER_BUILD = {"created_at", "build_seconds", "build_key", "notes", "sha256"}


def test_single_process_and_sharded_routes_write_the_same_manifest(ws, tmp_path: Path):
    """One constructor makes every manifest: the sharded route records the same fields as the
    single-process one, with the same values wherever the inputs are the same."""
    config = IndexConfig(**FACTORY)
    single = index_retrieval_set(ws.catalog, ws.store, tmp_path / "single", "small", 384, config=config)
    indices = tmp_path / "sharded"  # the sharded route's three steps, as its assets call them
    version = train_and_save(ws.catalog, ws.store, indices, "small", config)[0]
    for shard in all_shards(N_SHARDS):
        fill_and_save(ws.catalog, ws.store, indices, "small", shard)
    sharded = merge_and_publish(ws.catalog, ws.store, indices, "small", N_SHARDS, config=config)
    written = [json.loads((build.published.path / MANIFEST_FILE).read_text()) for build in (single, sharded)]
    assert written[0].keys() == written[1].keys() == IndexManifest.__dataclass_fields__.keys()
    same = {name: value for name, value in written[0].items() if name not in PER_BUILD}
    assert {name: written[1][name] for name in same} == same
    assert same["route"] == "full" and same["full_build_ntotal"] == version.n_chunks == same["ntotal"]
    assert "filled in 2 shards" in written[1]["notes"][-1]


def _materialize(instance, selection: str, key: str, config: dict | None = None):
    result = dg.materialize([*ALL_ASSETS, *sharded_assets(N_SHARDS)], instance=instance, partition_key=key,
                            selection=[selection], resources=default_resources(), raise_on_error=False,
                            run_config={"ops": {selection: {"config": config}}} if config else None)
    assert result.success, [e.step_failure_data.error for e in result.get_step_failure_events()]
    return result


def _single_path(root: Path, corpus: Path, chunker, embedder):
    """The reference: one process, the library's unsharded calls, a plain build_index."""
    settings = Settings(home=root)
    settings.ensure_dirs()
    catalog, store = Catalog.open(settings.catalog_url, home=root), FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("small", str(corpus))
    pipeline.materialize_corpus(catalog, store, chunker, embedder, "small")
    catalog.create_retrieval_set("small", ["small"])
    version = build_retrieval_set_version(catalog, store, "small", embedder.space).version
    ids, vectors = retrieval_set_vectors(store, version, embedder.space.dim)
    return store, ids, vectors, build_index(vectors, ids, IndexConfig(**FACTORY)).index


def test_sharded_path_matches_single_process(home: Settings, small_corpus: Path, tmp_path: Path,
                                             chunker, embedder):
    catalog = Catalog.open(home.catalog_url, home=home.home)
    catalog.add_corpus("small", str(small_corpus))
    instance = dagster_instance(home)
    assert materialize_corpus(instance, "small", selection=["documents"]).success

    runs = launch_shards(home, FEATURES_JOB, "small", N_SHARDS)  # two runs at once
    assert [r.success for r in runs] == [True, True], [r.output for r in runs]
    records = {r.dagster_run.run_id: r for r in instance.get_run_records()}
    first, second = (records[r.run_id] for r in runs)
    assert first.start_time < second.end_time and second.start_time < first.end_time  # they overlapped
    pids = set()
    for run in runs:  # each run in a process of its own, its steps in it (the in-process executor)
        starts = [e for e in instance.all_logs(run.run_id)
                  if e.is_dagster_event and e.dagster_event.event_type_value == "STEP_START"]
        assert sorted(e.step_key for e in starts) == ["chunk_shard", "embedding_shard"]
        [pid] = {e.dagster_event.pid for e in starts}
        pids.add(pid)
        [embedded] = [e.dagster_event.event_specific_data.materialization for e in instance.all_logs(run.run_id)
                      if e.is_dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
                      and e.dagster_event.asset_key.to_user_string() == "embedding_shard"]
        assert embedded.metadata["torch_threads"].value == threads_per_shard(N_SHARDS)  # its share of the cores
    assert len(pids) == 2 and os.getpid() not in pids
    store = FeatureStore(home.lancedb_uri)
    assert store.duplicate_keys("chunks").num_rows == 0

    catalog.create_retrieval_set("small", ["small"])
    ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, "small")
    _materialize(instance, "retrieval_set", "small")
    _materialize(instance, "index_training", "small", FACTORY)
    for shard in all_shards(N_SHARDS):  # in-process here (parallel runs are proven above)
        _materialize(instance, "index_shard", str(dg.MultiPartitionKey(
            {RETRIEVAL_SET_PARTITIONS: "small", "shard": shard.key})))
    merged = _materialize(instance, "sharded_faiss_index", "small", FACTORY)
    [event] = merged.get_asset_materialization_events()
    assert event.materialization.metadata["published"].value is True

    # the published (trusted) index is the merged one
    version = catalog.latest_retrieval_set_version("small")
    index, manifest = load_current(index_root(home.indices_dir, "small"), retrieval_set="small",
                                   expected_ntotal=version.n_chunks, is_trusted=catalog.is_trusted_index)
    assert manifest.factory == "IVF3,Flat" and "filled in 2 shards" in manifest.notes[-1]
    assert (manifest.config["factory"], manifest.config["nprobe"]) == ("IVF3,Flat", 1)  # its IndexConfig

    ref_store, ref_ids, ref_vectors, ref_index = _single_path(tmp_path / "single", small_corpus, chunker,
                                                              embedder)
    columns = [f.name for f in CHUNKS_SCHEMA]
    sharded_chunks = store.table("chunks", CHUNKS_SCHEMA).to_arrow().sort_by("chunk_id").select(columns)
    single_chunks = ref_store.table("chunks", CHUNKS_SCHEMA).to_arrow().sort_by("chunk_id").select(columns)
    assert sharded_chunks.num_rows >= 3 * 39 and sharded_chunks.equals(single_chunks)  # ids, tokens, spans
    ids, vectors = retrieval_set_vectors(store, version, 384)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(vectors, ref_vectors, atol=1e-5)

    queries = ref_vectors[np.random.default_rng(7).choice(len(ref_vectors), 64, replace=False)]
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", 1)
    got, want = index.search(queries, 10)[1], ref_index.search(queries, 10)[1]
    assert np.array_equal(got, want)
    assert len(pc.unique(sharded_chunks.column("doc_id"))) == 6


def test_sharded_assets_follow_the_automation_of_the_unsharded_ones(home: Settings, tmp_path: Path):
    """With RETRO_OPS_SHARDED_AUTOMATION on, Dagster's evaluator requests each shard step once its
    upstream changed, shard by shard, like the unsharded chain; off (the default), none of them."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "a.txt").write_text("Call me Ishmael. " * 60)
    (folder / "b.txt").write_text("The whale surfaced near the ship at dawn. " * 40)
    catalog = Catalog.open(home.catalog_url, home=home.home)
    catalog.add_corpus("tiny", str(folder))
    catalog.create_retrieval_set("tiny", ["tiny"])
    instance = dagster_instance(home)
    ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, "tiny")
    automated = sharded_assets(N_SHARDS, automated=True)
    on = dg.Definitions(assets=[*ALL_ASSETS, *automated], resources=default_resources())
    off = dg.Definitions(assets=[*ALL_ASSETS, *sharded_assets(N_SHARDS)], resources=default_resources())
    cursors: dict[int, object] = {}

    def requested(defs: dg.Definitions) -> dict[str, list[str]]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursors.get(id(defs)))
        cursors[id(defs)] = result.cursor
        return {key.to_user_string(): sorted(result.get_requested_partitions(key))
                for key in defs.resolve_asset_graph().get_all_asset_keys()
                if result.get_num_requested(key) and key.to_user_string() in SHARD_STEPS}

    def run(name: str, keys: list[str]) -> None:
        for key in keys:
            result = dg.materialize([*ALL_ASSETS, *automated], instance=instance, partition_key=key,
                                    selection=[name], resources=default_resources())
            assert result.success

    shards = [f"tiny|{s.key}" for s in all_shards(N_SHARDS)]
    requested(on), requested(off)  # the first ticks: nothing was updated since
    assert materialize_corpus(instance, "tiny", selection=["documents"]).success
    assert requested(off) == {}
    # one tick requests both steps of every shard, as for the unsharded chain (a dependency
    # requested in the same tick counts as updated); the index steps follow one tick after another
    assert requested(on) == {"chunk_shard": shards, "embedding_shard": shards}
    assert requested(on) == {}  # once, not on every tick
    run("chunk_shard", shards)
    run("embedding_shard", shards)
    assert requested(on) == {}
    run("retrieval_set", ["tiny"])
    assert requested(on) == {"index_training": ["tiny"]}  # the set's content changed
    run("index_training", ["tiny"])
    assert requested(on) == {"index_shard": shards}
    run("index_shard", shards)
    assert requested(on) == {"sharded_faiss_index": ["tiny"]}
    run("sharded_faiss_index", ["tiny"])
    assert requested(on) == {}
    assert requested(off) == {}
