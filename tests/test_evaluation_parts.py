"""An evaluation that can tell (issue #24): validation and test parts of the held-out documents,
document groups held out whole and kept out of training neighbours in every corpus, first chunks
reported apart, document-level and seed-level intervals, and the control neighbours."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from retro_ops.evaluation.intervals import paired_bootstrap, seed_interval
from retro_ops.evaluation.overlap import FIRST, READS, Buckets, reads_neighbours
from retro_ops.ids import sha256_hex
from retro_ops.training.config import SplitConfig
from retro_ops.training.data import ChunkTable, Sequences, group_key, split_documents
from retro_ops.training.neighbours import Neighbours, shuffled_neighbours, with_self_neighbours
from helpers import tiny_spec


def test_split_holds_out_whole_groups_and_keeps_validation_from_test():
    docs = [f"d{i:02d}" for i in range(40)]
    groups = {d: f"g{i // 2}" for i, d in enumerate(docs)}  # two editions of each of 20 chapters
    split = split_documents(docs, SplitConfig(heldout_fraction=0.3, validation_share=0.5), groups)
    parts = {"train": split.train, "validation": split.validation, "test": split.test}
    for name, ids in parts.items():
        others = {d for other, ds in parts.items() if other != name for d in ds}
        assert not {groups[d] for d in ids} & {groups[d] for d in others}, f"a group straddles {name}"
    assert len(split.validation) == len(split.test) == 6 and len(split.train) == 28
    assert split.heldout == sorted(split.validation + split.test)
    assert split_documents(docs, SplitConfig(heldout_fraction=0.3, seed=1), groups) != split


def test_legacy_split_is_the_split_models_were_trained_with_before():
    """Models recorded before validation parts and groups existed: the same held-out documents."""
    docs = [f"doc-{i}" for i in range(57)]
    ranked = sorted(docs, key=lambda d: sha256_hex(f"3:{d}"))  # the old rule, seed 3
    n_held = round(0.1 * len(docs))
    split = split_documents(docs, SplitConfig.legacy(seed=3))
    assert split.heldout == split.test == sorted(ranked[-n_held:]) and split.validation == []
    assert split.train == sorted(ranked[:-n_held])


def test_group_key_is_the_file_stem_across_corpora():
    assert group_key("a", ["kjv_nt/40_Matthew_05.txt"], "stem") == "40_Matthew_05"
    assert group_key("b", ["40_Matthew_05.txt"], "stem") == "40_Matthew_05"
    assert group_key("c", ["sotu_1990.jsonl#L3"], "stem") == "c"  # one file, many documents
    assert group_key("d", ["x/40_Matthew_05.txt"], "document") == "d"
    with pytest.raises(ValueError, match="group_by is 'document' or 'stem'"):
        SplitConfig(group_by="chapter")


def test_document_intervals_are_wider_than_chunk_intervals_when_chunks_of_a_document_agree():
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(30), 12)  # 30 documents of 12 chunks
    effect = rng.normal(0, 3, 30)[docs]  # a per-document gain: chunks of a chapter are correlated
    base = rng.uniform(200, 300, len(docs))
    nll_b, nll_a, n_bytes = base, base - 2 + effect + rng.normal(0, 0.5, len(docs)), np.full(len(docs), 100.0)
    by_chunk = paired_bootstrap(nll_a, nll_b, n_bytes)
    by_doc = paired_bootstrap(nll_a, nll_b, n_bytes, clusters=docs)
    assert by_doc.difference == pytest.approx(by_chunk.difference)
    assert (by_chunk.unit, by_chunk.units, by_doc.unit, by_doc.units) == ("chunks", 360, "documents", 30)
    assert by_doc.high - by_doc.low > 2 * (by_chunk.high - by_chunk.low)
    with pytest.raises(ValueError, match="3 cluster labels for 360 chunks"):
        paired_bootstrap(nll_a, nll_b, n_bytes, clusters=np.arange(3))


def test_seed_interval_is_a_t_interval_over_seeds():
    iv = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert (iv.difference, iv.unit, iv.units) == (2.0, "seeds", 3)
    assert iv.low == pytest.approx(2 - half) and iv.high == pytest.approx(2 + half)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.5])


def _table(docs: list[str], chunks_per_doc: int, m: int = 4) -> ChunkTable:
    n = len(docs) * chunks_per_doc
    tokens = np.arange(1, n * m + 1).reshape(n, m)
    return ChunkTable(np.arange(n), np.repeat(np.array(docs, dtype=object), chunks_per_doc),
                      np.tile(np.arange(chunks_per_doc, dtype=np.int32), len(docs)), tokens,
                      np.full(n, m, np.int32), np.full(n, 10), np.array([str(i) for i in range(n)], dtype=object))


def _neighbours(table: ChunkTable, k: int = 2) -> Neighbours:
    n, m = table.tokens.shape
    return Neighbours(table.chunk_ids.copy(), np.full((n, k), 7), np.ones((n, k), np.float32),
                      np.full((n, k, 2 * m), 5), np.ones((n, k), bool))


def test_first_chunks_and_chunks_after_an_empty_retrieval_do_not_count_as_reading():
    table = _table(["a", "b"], 5)  # sequences of 2 chunks: a0 a1 | a2 a3 | a4 | b0 b1 | ...
    sequences = Sequences(np.zeros((6, 8)), np.zeros((6, 8)),
                          np.array([[0, 1], [2, 3], [4, -1], [5, 6], [7, 8], [9, -1]]), np.zeros(6))
    neighbours = _neighbours(table)
    neighbours.mask[5] = False  # b0 found nothing: b1 reads nothing
    reads = reads_neighbours(sequences, neighbours, len(table))
    assert reads.tolist() == [False, True, False, True, False, False, False, False, True, False]
    alpha = np.linspace(0, 1, 10)
    buckets = Buckets.of(alpha, np.ones(10, bool), reads)
    assert buckets.rows[FIRST].tolist() == [0, 2, 4, 5, 6, 7, 9] and buckets.rows[READS].tolist() == [1, 3, 8]
    assert sum(len(r) for r in buckets.decile_rows) == 3


def test_control_neighbours_shuffle_rows_and_the_oracle_holds_the_exact_continuation():
    table = _table(["a", "b"], 3)
    neighbours = replace(_neighbours(table), tokens=np.arange(6 * 2 * 8).reshape(6, 2, 8))
    shuffled = shuffled_neighbours(neighbours, seed=0)
    assert sorted(map(tuple, shuffled.tokens.reshape(6, -1))) == sorted(map(tuple, neighbours.tokens.reshape(6, -1)))
    assert (shuffled.tokens != neighbours.tokens).any()
    oracle = with_self_neighbours(neighbours, table, 1.0, seed=0)
    for row in range(6):  # the chunk, then what follows it in its document (padded at its end)
        doc_end = (row // 3 + 1) * 3
        expected = table.tokens[row:doc_end].reshape(-1)[:8]
        assert oracle.tokens[row, 1, :len(expected)].tolist() == expected.tolist()
        assert (oracle.tokens[row, 0] == neighbours.tokens[row, 0]).all()


def test_training_neighbours_never_come_from_a_held_out_group_in_another_corpus(own_ws, tmp_path_factory):
    """An edition of a held-out chapter in another corpus (same file stem, other wording) is a
    training neighbour under a by-document split, and never under a grouped one. It adds a corpus
    and a set: to a home of its own."""
    from retro_ops.features import pipeline
    from retro_ops.features.chunking import Chunker
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.training.prepare import corpus_split, prepare_training

    ws = own_ws
    version = ws.catalog.latest_corpus_version("small")
    split = corpus_split(ws, version, SplitConfig(group_by="stem"))
    held = ws.catalog.documents_sources(split.heldout)
    stem = group_key(split.heldout[0], held[split.heldout[0]], "stem")
    text = ws.store.document_texts(split.heldout[:1])[split.heldout[0]]
    root = tmp_path_factory.mktemp("edition")
    (root / f"{stem}.txt").write_text(" ".join(reversed(text.split())))  # another "edition"
    ws.catalog.add_corpus("edition", str(root))
    pipeline.materialize_corpus(ws.catalog, ws.store, Chunker(ws.embedder.tokenizer), ws.embedder, "edition")
    ws.catalog.create_retrieval_set("with_edition", ["small", "edition"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "with_edition", ws.embedder.space)
    edition_doc = ws.catalog.corpus_doc_ids(ws.catalog.latest_corpus_version("edition").id)[0]
    spec = tiny_spec(steps=2, retrieval_set="with_edition")
    grouped = prepare_training(ws, replace(spec, split=SplitConfig(group_by="stem")))
    by_document = prepare_training(ws, replace(spec, split=SplitConfig(group_by="document")))
    assert edition_doc in grouped.forbidden_doc_ids and edition_doc not in by_document.forbidden_doc_ids
    used = grouped.train_neighbours.neighbours
    edition_chunks = set(ws.store.chunks_of_documents([edition_doc], ["chunk_id"]).column("chunk_id").to_pylist())
    assert not edition_chunks & set(used.ids[used.mask].tolist())
    loose = by_document.train_neighbours.neighbours
    assert edition_chunks & set(loose.ids[loose.mask].tolist()), "precondition: the edition is retrieved"


def test_distractors_and_withheld_neighbours_touch_only_their_share():
    from retro_ops.training.neighbours import with_distractors, withheld_neighbours

    table = _table([f"d{i}" for i in range(50)], 4)
    neighbours = replace(_neighbours(table), tokens=np.arange(200 * 2 * 8).reshape(200, 2, 8))
    moved = with_distractors(neighbours, 0.3, seed=0)
    changed = (moved.tokens != neighbours.tokens).any(axis=(1, 2))
    assert 0.2 < changed.mean() < 0.4  # about the share (a row may draw itself)
    assert sorted(map(tuple, moved.tokens.reshape(200, -1))) == sorted(map(tuple, neighbours.tokens.reshape(200, -1)))
    assert with_distractors(neighbours, 0.0, seed=0) is neighbours
    withheld = withheld_neighbours(neighbours, 0.25, seed=0)
    assert 0.15 < (~withheld.mask.any(axis=1)).mean() < 0.35 and (withheld.tokens == neighbours.tokens).all()


def test_groups_of_one_document_split_as_the_documents_would():
    docs = [f"doc-{i}" for i in range(30)]
    by_document = split_documents(docs, SplitConfig())
    assert split_documents(docs, SplitConfig(), {d: f"stem-{d}" for d in docs}) == by_document


def test_model_reads_count_retrieved_neighbours_never_a_moved_self_copy():
    from retro_ops.training.neighbours import with_distractors, withheld_neighbours
    from retro_ops.training.reads import neighbour_chunk_ids

    table = _table([f"d{i}" for i in range(30)], 4)
    real = replace(_neighbours(table), ids=np.arange(1000, 1240).reshape(120, 2))  # retrieved ids
    mixed = with_distractors(with_self_neighbours(real, table, 0.5, seed=0), 0.4, seed=0)
    assert (mixed.ids[mixed.copied] != np.repeat(table.chunk_ids[:, None], 2, 1)[mixed.copied]).any(), \
        "precondition: a distractor moved a self-copy to another chunk"
    read = neighbour_chunk_ids(mixed.ids, mixed.chunk_ids, mixed.copied, mixed.mask)
    kept = set(real.ids[:, 0]) | set(real.ids[~with_self_neighbours(real, table, 0.5, seed=0).copied[:, 1], 1])
    assert set(read.tolist()) == kept and not set(read.tolist()) & set(table.chunk_ids.tolist())
    withheld = withheld_neighbours(mixed, 0.5, seed=0)
    assert len(neighbour_chunk_ids(withheld.ids, withheld.chunk_ids, withheld.copied, withheld.mask)) < len(read)
