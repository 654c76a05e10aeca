"""Shared fixtures: a temporary home with real stores, the real frozen BERT, small real corpora."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retro_ops.catalog import Catalog
from retro_ops.features.chunking import Chunker
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features.embedder import Embedder
from retro_ops.features.store import FeatureStore
from retro_ops.settings import HOME_ENV, Settings
from sites import SMALL_CHAPTERS, Sites


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An isolated RETRO_OPS_HOME (resources and the CLI resolve it from the environment)."""
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv(HOME_ENV, str(settings.home))
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_EMBEDDER_PATH"):
        monkeypatch.delenv(var, raising=False)
    settings.ensure_dirs()
    return settings


@pytest.fixture
def catalog(home: Settings) -> Catalog:
    cat = Catalog.open(home.catalog_url, home=home.home)
    yield cat
    cat.close()


@pytest.fixture
def store(home: Settings) -> FeatureStore:
    return FeatureStore(home.lancedb_uri)


@pytest.fixture(scope="module", autouse=True)
def torch_threads_restored():
    """Each module starts with the process's torch thread count and leaves it so: an in-process
    shard step caps it (`embedding_shard`), and a later module whose child process trains with
    the default count (test_artifact_integrity's bit-identical resume) must not inherit the cap."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def chunker(embedder: Embedder) -> Chunker:
    return Chunker(embedder.tokenizer)


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "small_corpus"
    folder.mkdir()
    for name in SMALL_CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def sites(tmp_path_factory, embedder: Embedder, chunker: Chunker) -> Sites:
    """The session's built sites (tests/sites.py): each built once, copied for each user. Under
    pytest-xdist the workers share them: a worker's base temp lies in the session's own."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return Sites(tmp_path_factory.mktemp("sites"), embedder, chunker)
    return Sites(tmp_path_factory.getbasetemp().parent / "sites", embedder, chunker)


@pytest.fixture(scope="module")
def indexed_home(sites: Sites, tmp_path_factory):
    """A home whose corpus `small` (6 real chapters) is chunked and embedded, with a retrieval
    set `small` over it: the session's built site, copied once per test module."""
    root = sites.copy("small", tmp_path_factory.mktemp("indexed"))
    settings = Settings(home=root / "home")
    return settings, Catalog.open(settings.catalog_url, home=settings.home), FeatureStore(settings.lancedb_uri)


@pytest.fixture(scope="module")
def ws(indexed_home, embedder):
    """The indexed home as a Workspace, with the `small` set's index built and published."""
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.workspace import Workspace

    settings, catalog, store = indexed_home
    publish_retrieval_set(catalog, store, settings.indices_dir, "small", embedder.space)
    return Workspace(settings, catalog, store, embedder)


@pytest.fixture(scope="module")
def trained_ws(sites: Sites, tmp_path_factory, embedder: Embedder):
    """A Workspace on a copy of `small` with its index published and a tiny RETRO trained
    (helpers.tiny_spec(steps=2)): a module's training of that spec reuses it."""
    from retro_ops.workspace import Workspace

    root = sites.copy("small_trained", tmp_path_factory.mktemp("trained"))
    settings = Settings(home=root / "home")
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    yield Workspace(settings, catalog, FeatureStore(settings.lancedb_uri), embedder)
    catalog.close()


@pytest.fixture
def own_home(sites: Sites, tmp_path: Path):
    """(settings, catalog, store) of a copy of `small` with its set's index published, for one
    test that changes its home (exclusions, new sets): nothing it does reaches another test."""
    root = sites.copy("small_published", tmp_path / "site")
    settings = Settings(home=root / "home")
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    yield settings, catalog, FeatureStore(settings.lancedb_uri)
    catalog.close()


@pytest.fixture
def own_ws(own_home, embedder: Embedder):
    """`own_home` as a Workspace (the session's embedder): one test's own copy of `small`."""
    from retro_ops.workspace import Workspace

    return Workspace(*own_home, embedder)


@pytest.fixture
def pg_database_url():
    """A throwaway Postgres database (CI must reach the server; elsewhere the test skips)."""
    from postgres import throwaway_database

    yield from throwaway_database("retro_ops_test")


#: What `make check` leaves out (marked `heavy`): module -> its heavy tests (None: all of them).
#: Heavy = it starts processes (a daemon, the UI, a server, the CLI, killed children, Dagster
#: runs), drives a browser, trains models beyond one tiny reused one, or runs the demo or the
#: tutorial. `make test` runs everything; a new module is in `make check` until listed here.
HEAVY: dict[str, set[str] | None] = {
    "test_automation_daemon.py": None, "test_browser.py": None, "test_dagster_ui.py": None,
    "test_tutorial.py": {"test_the_tutorial_runs_on_a_fresh_home"},
    "test_cli_progress.py": None, "test_dagster_pipeline.py": None, "test_dagster_automation.py": None,
    "test_audit_exit.py": None, "test_artifact_integrity.py": None, "test_sharding.py": None,
    "test_mlflow_parallel.py": None, "test_write_integrity.py": None, "test_copy_capability.py": None,
    "test_relocatable_home.py": None, "test_purge.py": None, "test_lineage.py": None,
    "test_exclusions.py": None, "test_exclusion_report.py": None, "test_generation_log.py": None,
    "test_serving.py": None, "test_serving_limits.py": None, "test_verified_loader.py": None,
    "test_training.py": None, "test_evaluation.py": None, "test_perf_batching.py": None,
    "test_perf_spaces.py": None, "test_prod_postgres.py": None, "test_celery.py": None,
    "test_deploy.py": {"test_cluster_code_locations_validate"},
    "test_docs.py": {"test_the_site_builds_strictly", "test_generated_reference_pages_match_the_code"},
    "test_hostile_input.py": {"test_glob_neither_follows_linked_folders_nor_loops"},
    "test_cli.py": {"test_no_dagster_beta_warning_in_cli_output", "test_add_list_materialize_json",
                    "test_train_json_is_plain_json", "test_models_eval_generate_cli", "test_retrieval_set_cli"},
    "test_incremental.py": None, "test_catalog_race.py": {"test_two_processes_register_the_same_versions_once"},
    "test_local_worker.py": {"test_materialize_is_served_by_the_worker",
                             "test_an_error_comes_back_and_a_second_command_waits",
                             "test_worker_zero_runs_the_command_here", "test_a_stale_record_runs_the_command_here",
                             "test_start_over_a_killed_worker_then_stop_leaves_nothing"},
}


#: The longest modules, longest first. `make test` runs on pytest-xdist workers, which take whole
#: modules in collection order (`--dist loadfile --no-loadscope-reorder`); the long ones go first
#: so that no worker is left with one at the end. The daemon test waits on its runs most of its
#: time: started first, it overlaps with everything else. Order: module times of session 14
#: (junit XML, AVX2-only EPYC, after the code location stopped importing torch and LanceDB).
LONGEST_FIRST = [
    "test_automation_daemon.py", "test_tutorial.py", "test_celery.py", "test_dagster_pipeline.py",
    "test_sharding.py", "test_local_worker.py", "test_browser.py", "test_perf_spaces.py", "test_generation_log.py",
    "test_audit_exit.py", "test_copy_capability.py", "test_cli_progress.py", "test_serving_limits.py",
    "test_lineage.py", "test_write_integrity.py", "test_purge.py", "test_properties.py", "test_exclusions.py",
    "test_artifact_integrity.py", "test_cli.py", "test_prod_postgres.py", "test_dagster_automation.py",
    "test_training.py", "test_dagster_ui.py", "test_serving.py", "test_perf_batching.py", "test_docs.py",
    "test_relocatable_home.py", "test_mlflow_parallel.py", "test_deploy.py", "test_catalog.py", "test_catalog_race.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tests = HEAVY.get(item.path.name, set())
        if tests is None or item.originalname in tests:
            item.add_marker(pytest.mark.heavy)
    if "PYTEST_XDIST_WORKER" in os.environ:  # a stable sort: each module's own order is kept
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
