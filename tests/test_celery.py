"""The sharded pipeline on Dagster's Celery executor, for real (issue #28): two
`dagster-celery` workers started here as processes of their own, the machine's RabbitMQ as the
broker, the Dagster instance and the catalog on Postgres, the home on local disk. Every step runs
on a worker; the answers equal the single-process library path as tests/test_sharding.py
defines them; a worker SIGKILLed mid-step costs a redelivery, not the run; a broker that is down
fails a launch in one line.

The commands are those of deploy/README.md ("Celery"): `dagster-celery worker start ...`
(`assets.cluster.worker_command`) and `dagster asset materialize -f deploy/celery/definitions.py
...` (`assets.launch.launch_runs`). Queue and worker names are unique per run of this module, so
runs on one machine and broker never take each other's steps.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import faiss
import numpy as np
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from assets.cluster import (
    BROKER_ENV, CELERY_DIR, QUEUE_ENV, REPO, CeleryWorkers, check_broker, command_env, materialize_command,
)
from assets.instance import dagster_instance, ensure_partition
from assets.launch import CELERY_LOCATION, FEATURES_JOB, INDEX_JOB, launch_runs, launch_shards, materialize_corpus
from assets.partitions import CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS
from assets.sharded import SHARDS_ENV
from conftest import SMALL_CHAPTERS
from postgres import throwaway_database
from retro_ops.catalog import Catalog
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.errors import BrokerUnavailableError
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS_SCHEMA, embeddings_table_name
from retro_ops.retrieval.index.publish import index_root, load_current
from retro_ops.retrieval.retriever import Retriever
from retro_ops.retrieval.sets import retrieval_set_vectors
from retro_ops.settings import CATALOG_URL_ENV, DAGSTER_STORAGE_ENV, HOME_ENV, Settings
from test_sharding import FACTORY, N_SHARDS, _single_path

BROKER = os.environ.get("RETRO_OPS_TEST_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
INDEX_CONFIG = {"ops": {name: {"config": FACTORY} for name in ("index_training", "sharded_faiss_index")}}
pytestmark = pytest.mark.postgres


def _broker_or_skip() -> None:
    try:
        check_broker(BROKER)
    except BrokerUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI runs the Celery tests against the machine's RabbitMQ)")
        pytest.skip(str(exc))


def _free_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_broker_that_is_down_fails_a_launch_in_one_line(home: Settings, monkeypatch: pytest.MonkeyPatch):
    """Nothing listens on the broker's port: launching says so in one line within seconds, both
    from the launcher (before any process starts) and from a run started without it (the
    executor checks before it sends a step), instead of Celery retrying or waiting."""
    for name in (DAGSTER_STORAGE_ENV, QUEUE_ENV):
        monkeypatch.delenv(name, raising=False)
    port = _free_port()
    monkeypatch.setenv(BROKER_ENV, f"pyamqp://guest:s3cret@127.0.0.1:{port}//")
    line = (rf"^Celery broker amqp://guest:\*\*@127\.0\.0\.1:{port}// is not reachable \(.*Connection refused\); "
            rf"start it or point {BROKER_ENV} at a running one$")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=line):
        launch_shards(home, FEATURES_JOB, "small", N_SHARDS, location=CELERY_LOCATION)
    assert time.monotonic() - started < 10
    monkeypatch.delenv(BROKER_ENV)
    with pytest.raises(BrokerUnavailableError, match=rf"^no Celery broker: set {BROKER_ENV} "):
        launch_runs(home, "near_duplicates", [""], location=CELERY_LOCATION)

    monkeypatch.setenv(BROKER_ENV, f"pyamqp://guest:s3cret@127.0.0.1:{port}//")
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    dagster_instance(home)  # its dagster.yaml (SQLite storage under the home)
    started = time.monotonic()
    done = subprocess.run(materialize_command("near_duplicates"), cwd=REPO, env=command_env(), capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "s3cret" not in output
    assert re.search(line.strip("^$"), output, re.MULTILINE), output[-3000:]
    assert time.monotonic() - started < 300  # the import of the stack, then a prompt failure


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """The prod-like set-up of deploy/README.md: Dagster instance (deploy/celery/dagster.yaml) and
    catalog on throwaway Postgres databases, the home on local disk, two workers on a queue of
    this module's own."""
    _broker_or_skip()
    root = tmp_path_factory.mktemp("celery")
    dagster_db, catalog_db = throwaway_database("retro_ops_celery_dagster"), throwaway_database("retro_ops_celery_cat")
    dagster_url = next(dagster_db)
    catalog_url = sa.make_url(next(catalog_db)).set(drivername="postgresql+psycopg").render_as_string(
        hide_password=False)
    run = uuid.uuid4().hex[:8]
    with pytest.MonkeyPatch.context() as env:
        for name, value in {HOME_ENV: str(root / "home"), CATALOG_URL_ENV: catalog_url,
                            DAGSTER_STORAGE_ENV: dagster_url, "DAGSTER_HOME": str(root / "home" / "dagster"),
                            BROKER_ENV: BROKER, QUEUE_ENV: f"retro_ops_test_{run}", SHARDS_ENV: str(N_SHARDS),
                            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
            env.setenv(name, value)
        settings = Settings.from_env()
        settings.ensure_dirs()
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(CELERY_DIR / "dagster.yaml", settings.dagster_home / "dagster.yaml")
        workers = CeleryWorkers(os.environ[QUEUE_ENV], count=2, logs=root / "workers", prefix=f"retro_ops_{run}",
                                ready_timeout_s=1800, lifetime_s=7200)
        try:
            with workers:
                yield settings, workers
        finally:
            for database in (dagster_db, catalog_db):
                next(database, None)  # drop it (FORCE: a leftover connection does not block that)


def _worker_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[str, str, int]]:
    """(step, Celery worker, pid) of every step these runs handed to a worker."""
    steps = []
    for run_id in run_ids:
        hosts = {e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].value
                 for e in instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.is_engine_event
                 and "Celery worker" in (e.dagster_event.engine_event_data.metadata or {})}
        steps += [(e.step_key, hosts.get(e.step_key, ""), e.dagster_event.pid) for e in instance.all_logs(run_id)
                  if e.is_dagster_event and e.dagster_event.event_type_value == "STEP_START"]
    return steps


def _ok(runs) -> list[str]:
    assert [r.success for r in runs] == [True] * len(runs), [r.output for r in runs]
    return [r.run_id for r in runs]


def test_sharded_pipeline_on_two_celery_workers(cluster, tmp_path: Path, chunker, embedder):
    settings, workers = cluster
    corpus = tmp_path / "small"
    corpus.mkdir()
    for name in SMALL_CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    catalog.add_corpus("small", str(corpus))
    catalog.create_retrieval_set("small", ["small"])
    instance = dagster_instance(settings)
    ensure_partition(instance, RETRIEVAL_SET_PARTITIONS, "small")
    assert materialize_corpus(instance, "small", selection=["documents"]).success  # the corpus version

    run_ids = _ok(launch_shards(settings, FEATURES_JOB, "small", N_SHARDS, location=CELERY_LOCATION))
    run_ids += _ok(launch_runs(settings, "retrieval_set,index_training", ["small"], location=CELERY_LOCATION,
                               run_config={"ops": {"index_training": INDEX_CONFIG["ops"]["index_training"]}}))
    run_ids += _ok(launch_shards(settings, INDEX_JOB, "small", N_SHARDS, location=CELERY_LOCATION))
    run_ids += _ok(launch_runs(settings, "sharded_faiss_index", ["small"], location=CELERY_LOCATION,
                               run_config={"ops": {"sharded_faiss_index": INDEX_CONFIG["ops"]["sharded_faiss_index"]}}))

    # every step ran on a worker, both workers took steps, and each worker's pool process ran
    # step after step (warm: the stack imported once per worker, not once per step)
    steps = _worker_steps(instance, run_ids)
    assert sorted(s for s, _, _ in steps) == sorted(["chunk_shard", "embedding_shard"] * 2 + [
        "retrieval_set", "index_training", "index_shard", "index_shard", "sharded_faiss_index"])
    assert {host.split("@")[0] for _, host, _ in steps} == {w.name for w in workers.workers}
    assert os.getpid() not in {pid for _, _, pid in steps} and len({pid for _, _, pid in steps}) == 2

    # the published index is the merged one, and the retriever serves it
    version = catalog.latest_retrieval_set_version("small")
    index, manifest = load_current(index_root(settings.indices_dir, "small"), retrieval_set="small",
                                   expected_ntotal=version.n_chunks, is_trusted=catalog.is_trusted_index)
    assert manifest.factory == "IVF3,Flat" and "filled in 2 shards" in manifest.notes[-1]
    store = FeatureStore(settings.lancedb_uri)
    [[top]] = Retriever.open(catalog, store, embedder, settings.indices_dir, "small").retrieve(
        ["Call me Ishmael"], k=1)
    assert top.text

    # same answers as the single-process library path (tests/test_sharding.py)
    ref_store, ref_ids, ref_vectors, ref_index = _single_path(tmp_path / "single", corpus, chunker, embedder)
    columns = [f.name for f in CHUNKS_SCHEMA]
    got_chunks = store.table("chunks", CHUNKS_SCHEMA).to_arrow().sort_by("chunk_id").select(columns)
    want_chunks = ref_store.table("chunks", CHUNKS_SCHEMA).to_arrow().sort_by("chunk_id").select(columns)
    assert got_chunks.num_rows >= 3 * 39 and got_chunks.equals(want_chunks)
    assert len(pc.unique(got_chunks.column("doc_id"))) == 6
    ids, vectors = retrieval_set_vectors(store, version, 384)
    assert np.array_equal(ids, ref_ids) and np.allclose(vectors, ref_vectors, atol=1e-5)
    queries = ref_vectors[np.random.default_rng(7).choice(len(ref_vectors), 64, replace=False)]
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", 1)
    assert np.array_equal(index.search(queries, 10)[1], ref_index.search(queries, 10)[1])
    assert store.duplicate_keys("chunks").num_rows == 0


def _step_events(instance: dg.DagsterInstance, run_id: str, step: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.is_dagster_event and e.step_key == step]


def test_a_worker_killed_mid_embedding_shard(cluster, tmp_path: Path):
    """SIGKILL to the whole worker (main and pool process) running an embedding shard: its
    unacknowledged task goes back to the broker, the other worker runs the step again and the run
    succeeds; a re-run has nothing left to do; no key is stored twice and no document is left
    half-chunked."""
    settings, workers = cluster
    corpus = tmp_path / "kill"
    corpus.mkdir()
    for name in sorted(p.name for p in (CORPORA_DIR / "moby_dick").glob("chapter_*.txt"))[:16]:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    Catalog.open(settings.catalog_url, home=settings.home).add_corpus("kill", str(corpus))
    instance = dagster_instance(settings)
    assert materialize_corpus(instance, "kill", selection=["documents"]).success
    partition = str(dg.MultiPartitionKey({CORPUS_PARTITIONS: "kill", "shard": f"0-of-{N_SHARDS}"}))

    with ThreadPoolExecutor(1) as pool:
        launched = pool.submit(launch_runs, settings, "chunk_shard,embedding_shard", [partition],
                               location=CELERY_LOCATION)
        deadline, victim, run_id = time.monotonic() + 600, None, ""
        while victim is None:
            assert time.monotonic() < deadline and not launched.done(), "the embedding step never started"
            found = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition}), limit=1)
            run_id = found[0].run_id if found else ""
            started = [e for e in _step_events(instance, run_id, "embedding_shard")
                       if e.dagster_event.event_type_value == "STEP_START"] if run_id else []
            if started:
                victim = next(w for w in workers.workers if os.getpgid(e_pid(started[0])) == w.process.pid)
            time.sleep(0.2)
        time.sleep(1.0)  # the embedder loads and embeds
        assert not [e for e in _step_events(instance, run_id, "embedding_shard")
                    if e.dagster_event.event_type_value == "STEP_SUCCESS"], "the step ended before the kill"
        os.killpg(victim.process.pid, signal.SIGKILL)
        [run] = launched.result(timeout=900)
    assert run.success, run.output

    starts = [e for e in _step_events(instance, run.run_id, "embedding_shard")
              if e.dagster_event.event_type_value == "STEP_START"]
    assert len(starts) == 2 and e_pid(starts[0]) != e_pid(starts[1])  # killed, then redelivered
    [again] = launch_runs(settings, "chunk_shard,embedding_shard", [partition], location=CELERY_LOCATION)
    assert again.success, again.output
    [embedded] = [e.dagster_event.event_specific_data.materialization
                  for e in _step_events(instance, again.run_id, "embedding_shard")
                  if e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
    assert embedded.metadata["newly_embedded"].value == 0

    store = FeatureStore(settings.lancedb_uri)
    space = embedded.metadata["embedding_space"].value
    assert store.duplicate_keys("chunks").num_rows == 0
    assert store.duplicate_keys(embeddings_table_name(space)).num_rows == 0
    complete, partial = store.chunked_documents()
    assert not partial and complete


def e_pid(event) -> int:
    return event.dagster_event.pid
