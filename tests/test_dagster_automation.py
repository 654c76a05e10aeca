"""Declarative automation, evaluated tick by tick with Dagster's own evaluator on a real home:
a changed corpus file or a new exclusion requests exactly its dependents, nothing else.

The source observer sensor is run for real (its observations recorded as the daemon would), the
materializations it leads to are real Dagster runs, and `evaluate_automation_conditions` is the
same evaluation the automation daemon performs, made deterministic (no clock, no daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.automation import AUTOMATION_ENV, automation_status
from assets.definitions import defs
from assets.launch import materialize_corpus, materialize_retrieval_set
from assets.instance import dagster_instance
from assets.resources import CatalogResource
from assets.sources import source_observer
from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.features.store import FeatureStore
from retro_ops.settings import Settings


class Ticks:
    """Successive automation evaluations on one instance, carrying the cursor like the daemon."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def requested(self) -> dict[str, list[str]]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        found = {}
        for key in defs.resolve_asset_graph().get_all_asset_keys():
            if result.get_num_requested(key):
                found[key.to_user_string()] = sorted(result.get_requested_partitions(key))
        return found


class Observer:
    """The source_observer sensor, its observations written to the instance as the daemon does."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def tick(self) -> list[tuple[str, str | None]]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"catalog": CatalogResource()})
        result = source_observer(context)
        self.cursor = result.cursor
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        return [(e.asset_key.to_user_string(), e.partition) for e in result.asset_events]


@pytest.fixture
def two_corpora(home: Settings, tmp_path: Path, sites):
    """Corpora `small` and `other` (tests/sites.py TWO_CORPORA) at tmp_path/small and
    tmp_path/other, each materialized with its retrieval set and index through Dagster on the
    instance under `home`: the session's built site, copied for each test (each changes it)."""
    sites.copy("two_corpora", tmp_path)
    return Catalog.open(home.catalog_url, home=home.home), dagster_instance(home)


def test_a_changed_file_or_a_new_exclusion_requests_exactly_its_dependents(two_corpora, tmp_path, home):
    catalog, instance = two_corpora
    ticks, observer = Ticks(instance), Observer(instance)
    assert ticks.requested() == {}  # all materialized and observed by the runs: nothing to do
    assert observer.tick() == [("corpus_files", "other"), ("corpus_files", "small"), ("exclusions", None)]
    assert ticks.requested() == {}  # same data versions as the runs recorded
    assert observer.tick() == []  # nothing changed since its last tick

    # an edited file in `small`: its chain first; the retrieval sets (they read every corpus)
    # wait until the new embeddings exist and their blocking checks passed
    with open(tmp_path / "small" / "chapter_23.txt", "a") as handle:
        handle.write("\nA new paragraph about the whale, written after the first materialization.\n")
    assert observer.tick() == [("corpus_files", "small")]
    assert ticks.requested() == {"documents": ["small"], "chunks": ["small"], "chunk_embeddings": ["small"],
                                 "chunk_scores": ["small"]}
    assert ticks.requested() == {}  # requested once, not on every tick
    assert materialize_corpus(instance, "small").success  # the run automation launched
    assert ticks.requested() == {"retrieval_set": ["other", "small"]}
    for name in ("small", "other"):
        assert materialize_retrieval_set(instance, name, selection=["retrieval_set"]).success
    # only the set whose content changed gets a new index; `other` re-pinned the same chunks
    assert ticks.requested() == {"faiss_index": ["small"]}
    assert materialize_retrieval_set(instance, "small", selection=["faiss_index"]).success
    assert ticks.requested() == {}

    # a new exclusion: every retrieval set re-pins (then, as above, only the sets whose content
    # changed re-index)
    set_version = catalog.latest_retrieval_set_version("small")
    [chunk_id] = FeatureStore(home.lancedb_uri).members(set_version.digest, ["chunk_id"]).column(
        "chunk_id").to_pylist()[:1]
    catalog.record_exclusions([NewExclusion("chunk", str(chunk_id), "test: automation")], actor="test")
    assert observer.tick() == [("exclusions", None)]
    assert ticks.requested() == {"retrieval_set": ["other", "small"]}
    assert json.loads(observer.cursor)[""] != ""  # the exclusion digest it acted on


def test_automation_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(AUTOMATION_ENV, raising=False)
    assert automation_status() == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv(AUTOMATION_ENV, "1")
    assert automation_status() == dg.DefaultSensorStatus.RUNNING


def test_the_sensors_tick_interval(monkeypatch: pytest.MonkeyPatch):
    from assets.automation import INTERVAL_ENV, automation_interval

    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert automation_interval() == 30
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert automation_interval() == 5
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with pytest.raises(ValueError, match="RETRO_OPS_AUTOMATION_INTERVAL='0': expected a whole number of seconds"):
        automation_interval()
