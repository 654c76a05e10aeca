"""The whole pipeline in the prod profile: catalog, Dagster storage and MLflow on one Postgres.

Fresh databases are created by `retro-ops --profile prod db init` (the user's path) under a
random prefix and dropped afterwards. A tiny home then runs the demo's steps through the CLI:
a corpus, its retrieval set and index, and models trained on it; each fact the UI shows is then
read back with SQL from the database that must hold it, and no SQLite store may exist.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from postgres import PG_URL, admin_engine
from retro_ops.catalog.databases import postgres_databases
from retro_ops.cli.main import app
from retro_ops.settings import (
    ARTIFACTS_DIR_ENV, CATALOG_URL_ENV, DAGSTER_STORAGE_ENV, HOME_ENV, LANCEDB_URI_ENV, MLFLOW_URI_ENV,
    PG_URL_ENV, PROFILE_ENV, Settings, profile_urls,
)

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, ["--profile", "prod", *args])
    assert result.exit_code == 0, f"retro-ops {' '.join(args)}:\n{result.output}"
    return result.stdout


def rows(url: str, query: str, **params) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(query), params)]
    finally:
        engine.dispose()


@pytest.fixture
def prod_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny home under the prod profile; its three databases are dropped at the end."""
    admin = admin_engine(isolation_level="AUTOCOMMIT")  # skips (or fails under CI) if unreachable
    pg_url = sa.make_url(PG_URL).set(database=f"rops_{uuid.uuid4().hex[:10]}").render_as_string(
        hide_password=False)
    for var in (CATALOG_URL_ENV, MLFLOW_URI_ENV, DAGSTER_STORAGE_ENV, LANCEDB_URI_ENV, PROFILE_ENV,
                ARTIFACTS_DIR_ENV):
        monkeypatch.setenv(var, "")  # "" = unset; setenv (not delenv) so pytest restores what the CLI exports
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv(PG_URL_ENV, pg_url)
    monkeypatch.setenv(ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    urls = profile_urls(pg_url)
    yield urls
    with admin.connect() as connection:
        for url in urls.values():
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def test_profile_urls_and_bad_settings(monkeypatch: pytest.MonkeyPatch):
    urls = profile_urls("postgresql://ops:pw@db.internal:6543/acme")
    assert urls == {"catalog": "postgresql+psycopg://ops:pw@db.internal:6543/acme_catalog",
                    "dagster": "postgresql+psycopg2://ops:pw@db.internal:6543/acme_dagster",
                    "mlflow": "postgresql+psycopg2://ops:pw@db.internal:6543/acme_mlflow"}
    env = {PROFILE_ENV: "prod", PG_URL_ENV: "postgresql://ops@db/acme", HOME_ENV: "/tmp/h",
           MLFLOW_URI_ENV: "postgresql+psycopg2://ops@other/mlflow"}
    settings = Settings.from_env(env)
    assert settings.catalog_url.endswith("/acme_catalog") and settings.profile == "prod"
    assert settings.mlflow_uri == env[MLFLOW_URI_ENV]  # an explicit URL wins over the profile
    shown = [d.shown for d in postgres_databases(Settings.from_env({**env, MLFLOW_URI_ENV: ""}))]
    assert shown == ["postgresql+psycopg://ops@db/acme_catalog", "postgresql+psycopg2://ops@db/acme_dagster",
                     "postgresql+psycopg2://ops@db/acme_mlflow"]
    secret = Settings.from_env({**env, PG_URL_ENV: "postgresql://ops:s3cret@db/acme"})
    assert "s3cret" not in " ".join(d.shown for d in postgres_databases(secret))
    with pytest.raises(ValueError, match="the prod profile needs RETRO_OPS_PG_URL"):
        Settings.from_env({PROFILE_ENV: "prod"})
    with pytest.raises(ValueError, match="RETRO_OPS_PROFILE='staging': choose one of local, prod"):
        Settings.from_env({PROFILE_ENV: "staging"})
    with pytest.raises(ValueError, match="must name a Postgres server, not 'sqlite'"):
        Settings.from_env({PROFILE_ENV: "prod", PG_URL_ENV: "sqlite:///x.db"})
    with pytest.raises(ValueError, match="database prefix 'a-b' must be letters"):
        profile_urls("postgresql://h/a-b")
    monkeypatch.setenv(PROFILE_ENV, "")  # so pytest restores it after the CLI exports the profile
    bad = runner.invoke(app, ["--profile", "prod", "corpus", "list"], env={PG_URL_ENV: ""})
    assert bad.exit_code == 2 and "the prod profile needs RETRO_OPS_PG_URL" in bad.output


@pytest.mark.postgres
def test_demo_pipeline_on_postgres(prod_env: dict[str, str], small_corpus: Path, tmp_path: Path):
    init = json.loads(cli("db", "init", "--json"))
    assert [(d["store"], d["created"]) for d in init["databases"]] == [
        ("catalog", True), ("dagster", True), ("mlflow", True)]
    assert [d["database"].rsplit("_", 1)[1] for d in init["databases"]] == ["catalog", "dagster", "mlflow"]
    again = json.loads(cli("db", "init", "--json"))
    assert not any(d["created"] for d in again["databases"])

    cli("corpus", "add", "small", str(small_corpus))
    cli("retrieval-set", "create", "small", "--corpus", "small")
    materialized = json.loads(cli("materialize", "--json"))
    assert all(o["success"] for o in materialized), materialized
    cli("train", "--corpus", "small", "--set", "small", "--steps", "2", "--batch-size", "2",
        "--select", "training_neighbours,baseline_checkpoint,retro_checkpoint")  # exit 1 on failure

    # Dagster: the runs, their materializations and the partitions live in <db>_dagster
    dagster = prod_env["dagster"]
    statuses = rows(dagster, "SELECT status FROM runs")
    assert len(statuses) == 3 and {s for (s,) in statuses} == {"SUCCESS"}
    materializations = {key for (key,) in rows(
        dagster, "SELECT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")}
    assert {json.loads(k)[0] for k in materializations} == {
        "documents", "chunks", "chunk_embeddings", "chunk_scores", "retrieval_set", "faiss_index",
        "training_neighbours", "baseline_checkpoint", "retro_checkpoint"}
    assert rows(dagster, "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'corpus'") \
        == [("small",)]

    # the catalog: corpus version, retrieval-set version, published index and models in <db>_catalog
    catalog = prod_env["catalog"]
    assert rows(catalog, "SELECT name FROM corpora") == [("small",)]
    [(n_docs,)] = rows(catalog, "SELECT count(*) FROM documents")
    assert n_docs == 6
    [(n_chunks, published)] = rows(catalog, "SELECT v.n_chunks, b.published FROM index_builds b "
                                            "JOIN retrieval_set_versions v ON v.id = b.retrieval_set_version_id")
    assert n_chunks > 50 and published
    assert sorted(k for (k,) in rows(catalog, "SELECT kind FROM models")) == ["baseline", "retro"]

    # MLflow: the training runs and registered model versions live in <db>_mlflow
    mlflow = prod_env["mlflow"]
    finished = rows(mlflow, "SELECT run_uuid FROM runs WHERE status = 'FINISHED'")
    assert len(finished) >= 2
    versions = rows(mlflow, "SELECT name, run_id FROM model_versions")
    assert {name for name, _ in versions} == {"retro-ops-baseline", "retro-ops-retro"}
    assert {run for _, run in versions} <= {r for (r,) in finished}
    assert rows(mlflow, "SELECT count(*) FROM registered_model_aliases")[0][0] >= 2

    # and nothing fell back to SQLite under the home; artifacts went to the artifacts folder
    home = tmp_path / "home"
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
    assert list((tmp_path / "artifacts").rglob("model.safetensors"))
