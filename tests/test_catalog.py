"""Catalog migrations on SQLite and on the real Postgres, and what the catalog records."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from retro_ops.catalog import Catalog, migrate
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.catalog.store import alembic_config, make_engine
from retro_ops.corpus import Document
from retro_ops.errors import CorpusError, UnknownCorpusError
from postgres import PG_URL, throwaway_schema

TABLES = {"corpora", "corpus_versions", "documents", "document_sources", "retrieval_sets",
          "models", "model_training_documents", "evaluations", "deployments",
          "retrieval_set_versions", "exclusions", "index_builds",
          "corpus_version_documents", "corpus_version_sources", "embedding_spaces", "feature_versions",
          "purged_documents", "exclusion_reads",
          "alembic_version"}


def _tables(engine: sa.Engine, schema: str | None = None) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def _round_trip(engine: sa.Engine, schema: str | None = None) -> None:
    """head creates every table, base drops them all, head again works (migrations reversible)."""
    migrate(engine)
    assert _tables(engine, schema) == TABLES
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert _tables(engine, schema) == {"alembic_version"}
    migrate(engine)
    assert _tables(engine, schema) == TABLES


def test_sqlite_migrations_round_trip(tmp_path: Path):
    _round_trip(make_engine(f"sqlite:///{tmp_path / 'catalog.db'}"))


@pytest.fixture
def pg_engine():
    """A fresh schema in the Postgres `test` database; CI must reach it, elsewhere it may skip."""
    for schema in throwaway_schema("retro_ops_test"):
        engine = sa.create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
        yield engine, schema
        engine.dispose()


@pytest.mark.postgres
def test_postgres_migrations_round_trip(pg_engine):
    engine, schema = pg_engine
    _round_trip(engine, schema)


@pytest.mark.postgres
def test_postgres_catalog_records_versions(pg_engine):
    engine, _ = pg_engine
    migrate(engine)
    _exercise(Catalog(engine))


def test_sqlite_catalog_records_versions(catalog: Catalog):
    _exercise(catalog)


def _exercise(catalog: Catalog) -> None:
    catalog.add_corpus("c", "/data/c")
    assert catalog.add_corpus("c", "/data/c").name == "c"  # idempotent
    with pytest.raises(CorpusError, match=r"corpus 'c' already exists with source '/data/c'"):
        catalog.add_corpus("c", "/elsewhere")
    with pytest.raises(UnknownCorpusError, match=r"unknown corpus 'x' \(known: c\)"):
        catalog.get_corpus("x")
    docs = [Document("d1", "one", ["/data/c/a.txt", "/data/c/b.txt"]), Document("d2", "two", ["/data/c/c.txt"])]
    v1 = catalog.record_corpus_version("c", docs, "digest1", documents_lance_version=3)
    v2 = catalog.record_corpus_version("c", docs[:1], "digest2", documents_lance_version=4)
    assert catalog.corpus_doc_ids(v1.id) == ["d1", "d2"]
    assert catalog.corpus_doc_ids(v2.id) == ["d1"]
    assert catalog.latest_corpus_version("c").digest == "digest2"
    assert catalog.document_sources("d1") == ["a.txt", "b.txt"]  # relative to the corpus root
    [info] = catalog.list_corpora()
    assert (info.n_versions, info.n_documents, info.latest_digest) == (2, 1, "digest2")
    _exercise_models(catalog, v1.id)


def _exercise_models(catalog: Catalog, corpus_version_id: int) -> None:
    """Models, their training documents, evaluations and deployments (the serving record)."""
    model = catalog.record_model(
        training_doc_ids=["d2", "d1"], kind="baseline", key="k" * 64, checkpoint_dir="/ckpt",
        weights_sha256="a" * 64, config={"d_model": 8}, corpus_version_id=corpus_version_id,
        tokenizer_id="tok", code_version="abc")
    catalog.set_model_registry(model.id, run_id="run1", name="retro-ops-baseline", version="3")
    assert catalog.resolve_model("retro-ops-baseline/3").id == model.id
    assert catalog.resolve_model("baseline").config == {"d_model": 8}
    assert catalog.model_training_doc_ids(model.id) == ["d1", "d2"]
    catalog.record_evaluation(model_id=model.id, setting="no retrieval", retrieval_set_version_id=None,
                              eval_corpus_version_id=corpus_version_id, bits_per_byte=1.5,
                              loss_per_token=4.0, tokens=10, n_bytes=40, mlflow_run_id="run2")
    for action in ("start", "swap"):
        catalog.record_deployment(model_id=model.id, retrieval_set_version_id=None, action=action,
                                  endpoint="http://127.0.0.1:8000", token_id="0123abcd")
    first, second = catalog.deployments()
    assert (first["action"], second["action"]) == ("start", "swap")
    assert first["created_at"] <= second["created_at"] and second["token_id"] == "0123abcd"


def _exclusions_upgrade(engine: sa.Engine) -> None:
    """0007 keeps a chunk exclusion made before it (target = the chunk id) and, going down,
    drops only the scopes 0006 cannot hold."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def to(revision: str, up: bool = True) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.upgrade if up else command.downgrade)(config, revision)

    to("0006")
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO exclusions (chunk_id, reason, policy, created_by, created_at) "
                          "VALUES (42, 'old takedown', 'manual', 'ops', CURRENT_TIMESTAMP)"))
    to("head")
    catalog = Catalog(engine)
    [old] = catalog.list_exclusions()
    assert (old.scope, old.target, old.reason) == ("chunk", "42", "old takedown")
    assert catalog.active_exclusions().chunk_ids == {42}
    catalog.record_exclusions([NewExclusion("content_hash", "ab" * 16, "toxic")], actor="ops")
    to("0006", up=False)
    with engine.begin() as c:
        assert c.execute(sa.text("SELECT chunk_id, reason FROM exclusions")).all() == [(42, "old takedown")]


def test_sqlite_exclusions_migration_keeps_old_rows(tmp_path: Path):
    _exclusions_upgrade(make_engine(f"sqlite:///{tmp_path / 'catalog.db'}"))


@pytest.mark.postgres
def test_postgres_exclusions_migration_keeps_old_rows(pg_engine):
    _exclusions_upgrade(pg_engine[0])


def _checkpoint_manifest_downgrade(engine: sa.Engine) -> None:
    """0012 adds the checkpoint manifest; going down drops it and keeps the model, whose row,
    migrated up again, has no manifest (verified as far as its weights_sha256 goes)."""
    migrate(engine)
    catalog = Catalog(engine)
    catalog.add_corpus("c", "/data/c")
    version = catalog.record_corpus_version("c", [Document("d1", "one", ["/data/c/a.txt"])], "v1",
                                            documents_lance_version=1)
    model = catalog.record_model(
        training_doc_ids=["d1"], kind="retro", key="k" * 64, checkpoint_dir="/ckpt",
        weights_sha256="a" * 64, checkpoint_sha256="b" * 64,
        checkpoint_manifest={"model.safetensors": "a" * 64}, config={}, corpus_version_id=version.id,
        tokenizer_id="t", code_version="c")
    assert catalog.resolve_model("retro").checkpoint_manifest == {"model.safetensors": "a" * 64}
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0011")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("models")}
    assert "weights_sha256" in columns and not {"checkpoint_sha256", "checkpoint_manifest"} & columns
    migrate(engine)
    old = Catalog(engine).resolve_model(f"model-{model.id}")
    assert (old.weights_sha256, old.checkpoint_sha256, old.checkpoint_manifest) == ("a" * 64, None, None)


def test_sqlite_checkpoint_manifest_migration_keeps_old_models(tmp_path: Path):
    _checkpoint_manifest_downgrade(make_engine(f"sqlite:///{tmp_path / 'catalog.db'}"))


@pytest.mark.postgres
def test_postgres_checkpoint_manifest_migration_keeps_old_models(pg_engine):
    _checkpoint_manifest_downgrade(pg_engine[0])
