"""Declarative automation with the real daemon: `retro-ops ui --automation` on a home with two
tiny corpora, each materialized with its retrieval set and index. Appending a paragraph to one
file of `small` makes the daemon's source observer record a new data version, and its automation
sensor launch runs that re-materialize exactly `small`'s chain, once; nothing of `other` but the
no-op re-pin of its retrieval set (a set reads every corpus, so its condition cannot tell which
changed; the re-pin finds the same chunks, keeps the same data version and builds no index).

The sensors tick as often as the daemon loops here (`--interval 5`; Dagster's sensor and asset
daemons loop every 5 s at most), not every 30 s. Still slow: four runs one after the other
(the corpus chain, the two re-pins, the index), each a fresh process that imports torch and
Dagster; 6.5-7 min on the shared 2-core machine at load 8-9. It is the acceptance test of
declarative automation (issue #15), so CI runs it anyway: first, on one of `make test`'s two
workers (tests/conftest.py LONGEST_FIRST), while the other runs the rest of the suite beside it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dagster as dg
from helpers import free_port, start_ui, wait_for_asset_graph
from test_dagster_automation import two_corpora  # noqa: F401  (the fixture: corpora small and other)
from test_dagster_ui import _alive, _process_tree

from assets.definitions import defs

INTERVAL = 5  # seconds between sensor ticks (the daemons' own loop)
SETTLE_TIMEOUT = 300.0
CHAIN = {("documents", "small"), ("chunks", "small"), ("chunk_embeddings", "small"),
         ("chunk_scores", "small"), ("retrieval_set", "small"), ("faiss_index", "small"),
         ("retrieval_set", "other")}
UNFINISHED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}


def _events(instance: dg.DagsterInstance, after: int, observations: bool = False) -> list:
    fetch = instance.fetch_observations if observations else instance.fetch_materializations
    found = []
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        found += fetch(dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=1000).records
    return found


def _materialized(instance: dg.DagsterInstance, after: int) -> list[tuple[str, str]]:
    return sorted((r.asset_key.to_user_string(), r.partition_key) for r in _events(instance, after))


def _runs_since(instance: dg.DagsterInstance, known: set[str]) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id not in known]


def _wait(what: str, ready, process, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"retro-ops ui exited with {process.returncode}: {log.read_text()[-2000:]}")
        found = ready()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; log: {log.read_text()[-3000:]}")


def _version(instance: dg.DagsterInstance, key: str, partition: str) -> str | None:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition]), limit=1).records
    return record.asset_materialization.tags.get("dagster/data_version")


def test_the_daemon_rematerializes_exactly_the_changed_corpus_chain(two_corpora, tmp_path: Path):  # noqa: F811
    _, instance = two_corpora
    other_set_version = _version(instance, "retrieval_set", "other")
    before = {r.dagster_run.run_id for r in instance.get_run_records()}
    start = instance.event_log_storage.get_maximum_record_id()
    port, log = free_port(), tmp_path / "ui.log"
    process = start_ui(port, log, "--automation", "--interval", str(INTERVAL))
    tree: set[int] = set()
    try:
        wait_for_asset_graph(process, port, log)
        tree = _process_tree(process.pid)
        # the observer's first tick records every source; with nothing changed, nothing runs
        _wait("the source observer's first tick", lambda: _events(instance, start, observations=True),
              process, log, 120)
        time.sleep(3 * INTERVAL)
        assert _runs_since(instance, before) == [], "automation ran something with no source changed"

        mark = instance.event_log_storage.get_maximum_record_id()
        with open(tmp_path / "small" / "chapter_23.txt", "a") as handle:
            handle.write("\nA new paragraph about the whale, written after the first materialization.\n")

        def settled():
            runs = _runs_since(instance, before)
            done = set(_materialized(instance, mark)) >= CHAIN and not any(r.status in UNFINISHED for r in runs)
            return runs if done or any(r.status == dg.DagsterRunStatus.FAILURE for r in runs) else None

        runs = _wait("the automation runs", settled, process, log, SETTLE_TIMEOUT)
        assert [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS] == []
        time.sleep(5 * INTERVAL)  # a few more ticks of both sensors: no second round
        assert _materialized(instance, mark) == sorted(CHAIN)  # each once, nothing of `other`'s chain
        final = _runs_since(instance, before)
        assert {r.run_id for r in final} == {r.run_id for r in runs}
        assert all(r.tags.get("dagster/sensor_name") == "retro_ops_automation" for r in final), \
            [r.tags for r in final]
        assert _version(instance, "retrieval_set", "other") == other_set_version  # a no-op re-pin
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text(errors="replace")[-2000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if _alive(p)], "processes outlived retro-ops ui"
