"""Catalog writes are race-free across machines (issue #28, item 5): two real processes that
register the same corpora, corpus versions, documents and embedding spaces at the same instant
on one Postgres store each row once (insert ... on conflict do nothing), and both get the same
corpus version back. SQLite keeps one writer at a time by itself; Postgres is where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from catalog_race_child import ROUND_SECONDS, documents
from postgres import PG_URL, throwaway_schema
from retro_ops.catalog import Catalog
from retro_ops.catalog import tables as m
from retro_ops.corpus import Document

ROUNDS = 12
CHILD = Path(__file__).with_name("catalog_race_child.py")


@pytest.fixture
def pg_schema():
    """A new, empty schema in the Postgres `test` database (the children migrate it)."""
    yield from throwaway_schema("retro_ops_race")


def _rows(engine: sa.Engine, table: type[m.Base]) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(table))


@pytest.mark.postgres
def test_two_processes_register_the_same_versions_once(pg_schema: str):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parents[1]), str(CHILD.parent)])}
    children = [subprocess.Popen([sys.executable, str(CHILD), PG_URL, pg_schema, str(ROUNDS)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    try:
        for child in children:  # both have imported everything before the clock starts
            assert child.stdout.readline().strip() == "ready", child.stderr.read()[-3000:]
        start_at = time.time() + 1.0
        outputs = []
        for child in children:
            child.stdin.write(f"{start_at}\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=300 + ROUNDS * ROUND_SECONDS)
            assert child.returncode == 0, err[-3000:]
            outputs.append([json.loads(line) for line in out.splitlines()])
    finally:
        for child in children:
            child.kill()
    assert outputs[0] == outputs[1] and len(outputs[0]) == ROUNDS  # the same version ids came back

    engine = sa.create_engine(PG_URL, connect_args={"options": f"-csearch_path={pg_schema}"})
    try:
        catalog = Catalog(engine)
        assert [c.name for c in catalog.list_corpora()] == sorted(f"c{r}" for r in range(ROUNDS))
        assert all(c.n_versions == 1 for c in catalog.list_corpora())
        assert _rows(engine, m.CorpusVersion) == ROUNDS
        assert _rows(engine, m.Document) == 3 * ROUNDS + 3  # six a round, three shared with the next
        assert _rows(engine, m.DocumentSource) == 6 * ROUNDS
        assert _rows(engine, m.CorpusVersionDocument) == _rows(engine, m.CorpusVersionSource) == 6 * ROUNDS
        assert _rows(engine, m.EmbeddingSpaceRow) == ROUNDS
        for r in range(ROUNDS):
            version = catalog.latest_corpus_version(f"c{r}")
            assert catalog.corpus_doc_ids(version.id) == sorted(d.doc_id for d in documents(r))
    finally:
        engine.dispose()


def test_same_documents_from_the_same_files_are_the_same_version(catalog: Catalog):
    """Recording the latest version's documents and sources again returns that version; another
    digest, then the first again, are versions 2 and 3 (history is kept, only a repeat of the
    latest folds); the same documents from a renamed file are a new version."""
    catalog.add_corpus("c", "/data/c")
    docs = [Document("d1", "one", ["/data/c/a.txt"]), Document("d2", "two", ["/data/c/b.txt"])]
    first = catalog.record_corpus_version("c", docs, "digest1", documents_lance_version=1)
    assert catalog.record_corpus_version("c", docs, "digest1", documents_lance_version=2) == first
    second = catalog.record_corpus_version("c", docs[:1], "digest2", documents_lance_version=3)
    third = catalog.record_corpus_version("c", docs, "digest1", documents_lance_version=4)
    assert first.id < second.id < third.id and catalog.latest_corpus_version("c") == third
    renamed = [docs[0], Document("d2", "two", ["/data/c/renamed.txt"])]
    fourth = catalog.record_corpus_version("c", renamed, "digest1", documents_lance_version=4)
    assert fourth.id > third.id and catalog.get_corpus("c").n_versions == 4
    assert catalog.document_sources("d2") == ["b.txt", "renamed.txt"]
    with catalog.session() as s:
        assert sorted(s.scalars(sa.select(m.CorpusVersion.seq))) == [1, 2, 3, 4]
