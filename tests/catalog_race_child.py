"""One of the processes of tests/test_catalog_race.py: opens the catalog in a Postgres schema
(migrating it, if it is new, at the same moment as its twin), then in each round, at the same
wall-clock instant as its twin, adds the round's corpus, records the same corpus version and
registers the same embedding space. Prints what the catalog handed back, one JSON line per round.

python tests/catalog_race_child.py PG_URL SCHEMA ROUNDS, then START_AT (a time.time()) on stdin
once it has printed "ready".
"""

from __future__ import annotations

import json
import sys
import time

import sqlalchemy as sa

from retro_ops.catalog import Catalog
from retro_ops.catalog.store import migrate
from retro_ops.corpus import Document
from retro_ops.features.spaces import EmbeddingSpace  # torch-free: the children start fast

ROUND_SECONDS = 0.4


def documents(round_: int) -> list[Document]:
    """Six documents per round, three of them shared with the round before (the documents table
    is keyed across corpora, so rounds race on shared rows too)."""
    ids = [f"{i:032x}" for i in range(3 * round_, 3 * round_ + 6)]
    return [Document(doc_id, f"text of {doc_id}", [f"/corpora/c{round_}/{doc_id}.txt"]) for doc_id in ids]


def space(round_: int) -> EmbeddingSpace:
    return EmbeddingSpace(f"space{round_:02d}", "m", "/m", "0" * 64, "mean", True, 8, 64)


def until(at: float) -> None:
    while (left := at - time.time()) > 0:
        time.sleep(min(left, 0.05))


def main(url: str, schema: str, rounds: int) -> None:
    engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())  # the same instant for both, sent once both are ready
    until(start_at)
    migrate(engine)  # both processes at once on a new schema: one migrates, the other waits
    catalog = Catalog(engine)
    for r in range(rounds):
        until(start_at + (r + 1) * ROUND_SECONDS)
        catalog.add_corpus(f"c{r}", f"/corpora/c{r}")
        version = catalog.record_corpus_version(f"c{r}", documents(r), f"digest{r}", documents_lance_version=r)
        catalog.register_embedding_space(space(r))
        print(json.dumps({"round": r, "version_id": version.id, "digest": version.digest}), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
