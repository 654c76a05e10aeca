"""Numbers you can trust (#14): leak-free splits and neighbours, paired initial weights, exact
bytes, bootstrap intervals, alpha buckets and the leakage filter. Tiny models, real everything."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.evaluation.compare import (
    TrainingDocumentError, evaluate_models, heldout_text, model_heldout_text,
)
from retro_ops.evaluation.intervals import mean_and_spread, paired_bootstrap
from retro_ops.evaluation.overlap import FIRST, READS, longest_shared_span
from retro_ops.evaluation.token_bytes import gap_bytes, token_bytes
from retro_ops.features.chunking import Chunker
from retro_ops.model import RetroConfig
from retro_ops.training.config import SplitConfig
from retro_ops.training.data import load_chunk_table
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model
from retro_ops.training.trainer import seeded_model
from helpers import TINY, tiny_spec


@pytest.fixture(scope="module")
def seed_one(ws):
    """`train --seed 1`: the split, data order and initialisation all follow seed 1."""
    spec = replace(tiny_spec(steps=2, seed=1), split=SplitConfig(seed=1))
    data = prepare_training(ws, spec)
    return data, train_model(ws, data, "baseline").info


def test_eval_after_seed_one_scores_no_training_document(ws, seed_one, monkeypatch):
    data, info = seed_one
    assert (info.split_seed, info.split_heldout_fraction) == (1, data.spec.split.heldout_fraction)
    text = model_heldout_text(ws, info, part="heldout")
    assert text.doc_ids == data.heldout_doc_ids
    assert not set(text.doc_ids) & set(ws.catalog.model_training_doc_ids(info.id))
    # the old behaviour (the default seed's split) would score a training document: refused
    default = heldout_text(ws, "small", SplitConfig(), 64)
    assert set(default.doc_ids) & set(data.train_doc_ids), "precondition: the seeds split differently"
    with pytest.raises(TrainingDocumentError, match=f"{info.ref} was trained on 1 of the 1 documents"):
        evaluate_models(ws, [info], default, [], k=2)
    whole = heldout_text(ws, "small", SplitConfig(), 64, whole=True)
    with pytest.raises(TrainingDocumentError, match="evaluate it on its own held-out documents"):
        evaluate_models(ws, [info], whole, [], k=2)
    # the command line evaluates exactly the model's own held-out documents
    from retro_ops.cli.main import app

    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    result = CliRunner().invoke(app, ["eval", "--model", info.ref, "--part", "heldout", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["text"] == "small held-out" and report["rows"][0]["tokens"] > 0


def test_heldout_chunks_never_appear_in_training_neighbours(ws, seed_one):
    data, _ = seed_one
    heldout = set(data.heldout_table.chunk_ids.tolist())
    used = set(data.train_neighbours.neighbours.ids[data.train_neighbours.neighbours.mask].tolist())
    assert used and not used & heldout
    assert set(data.heldout_doc_ids) <= data.forbidden_doc_ids
    # ... while held-out chunks may retrieve training text, as the paper's evaluation does
    assert data.heldout_neighbours.neighbours.mask.any()


def test_retro_baseline_and_retrofit_share_initial_decoder_weights():
    retro_config = RetroConfig.from_dict({**TINY.to_dict(), "vocab_size": 300, "n_neighbours": 2})
    base_config = RetroConfig.from_dict({**retro_config.to_dict(), "retrieval": False})
    retro, baseline = seeded_model(retro_config, 3), seeded_model(base_config, 3)
    names = retro.decoder_parameter_names()
    state, base = retro.state_dict(), baseline.state_dict()
    assert names == baseline.decoder_parameter_names()
    assert all(torch_equal(state[n], base[n]) for n in names)
    assert not torch_equal(seeded_model(base_config, 4).state_dict()[names[0]], base[names[0]])
    # the retrieval parts are RETRO's own (seeded) draws: a RETROfit starts from the same ones
    again = seeded_model(retro_config, 3).state_dict()
    assert all(torch_equal(again[n], state[n]) for n in state)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_bootstrap_interval_of_a_model_against_itself_is_zero_width():
    rng = np.random.default_rng(0)
    nll, n_bytes = rng.gamma(2.0, 20.0, 300), rng.integers(150, 300, 300)
    same = paired_bootstrap(nll, nll, n_bytes)
    assert same.difference == same.low == same.high == 0.0 and not same.excludes_zero
    better = paired_bootstrap(nll * 0.97, nll, n_bytes, seed=1)
    assert better.high < 0 and better.excludes_zero and better.low <= better.difference <= better.high
    noisy = paired_bootstrap(nll + rng.normal(0, 5, 300), nll, n_bytes)
    assert noisy.low < noisy.difference < noisy.high
    assert paired_bootstrap(nll * 0.97, nll, n_bytes, seed=1) == better  # seeded
    with pytest.raises(ValueError, match="no evaluated bytes"):
        paired_bootstrap(np.zeros(0), np.zeros(0), np.zeros(0))
    assert mean_and_spread([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_and_spread([5.0]) == (5.0, 0.0)


def test_exact_byte_accounting_with_irregular_whitespace(embedder, tmp_path):
    chunker = Chunker(embedder.tokenizer)
    text = "  Call me\tIshmael.\n\n\n   Some years ago — never mind\u00a0how long  precisely —\r\n café naïve ✓ \n"
    (ids, offsets), = chunker.tokenize([text])
    sizes = gap_bytes(text, offsets)
    assert len(sizes) == len(ids) and (sizes > 0).all()
    assert sizes.sum() == len(text[:offsets[-1][1]].encode("utf-8"))
    # what the scored targets stand for: everything after the first token, whitespace included
    assert sizes[1:].sum() == len(text[offsets[0][1]:offsets[-1][1]].encode("utf-8"))


def test_token_bytes_of_stored_chunks_cover_the_scored_text_exactly(ws):
    doc_id = ws.catalog.corpus_doc_ids(ws.catalog.latest_corpus_version("small").id)[0]
    table = load_chunk_table(ws.store, [doc_id], 64)
    sizes = token_bytes(ws.store, Chunker(ws.embedder.tokenizer), table)
    text = ws.store.document_texts([doc_id])[doc_id]
    assert sizes.sum() == len(text.rstrip().encode("utf-8"))  # every byte once, up to the last token
    assert sizes.sum() > table.n_bytes.sum()  # chunk spans alone miss the whitespace between chunks


def test_longest_shared_span():
    chunks = np.array([[1, 2, 3, 4, 5, -1], [7, 7, 7, 7, 7, 7]])
    values = np.array([[[9, 2, 3, 4, 8, 1, 2, -2], [3, 4, 5, 6, -2, -2, -2, -2]],
                       [[-2] * 8, [1, 2, 3, 4, 5, 6, 7, 8]]])
    assert longest_shared_span(chunks, values).tolist() == [3, 1]


# -- the leakage filter on an eval set that deliberately overlaps the retrieval set -----------

@pytest.fixture(scope="module")
def leaky(ws, tmp_path_factory):
    """Corpus `probe`: a State of the Union excerpt P1 and a Moby-Dick chapter P2, neither trained
    on; set `leaky` = the training chapters plus P1 again with other case and whitespace (a
    near-duplicate the exact doc id misses). A tiny RETRO trained on `small` reads them."""
    from retro_ops.features import pipeline
    from retro_ops.retrieval.index.route import publish_retrieval_set

    root = tmp_path_factory.mktemp("leaky")
    speech = json.loads((CORPORA_DIR / "sotu" / "sotu_1990_2021.jsonl").read_text().splitlines()[0])["text"]
    p1 = " ".join(speech.split()[:900])
    (root / "probe").mkdir()
    (root / "probe" / "p1.txt").write_text(p1)
    (root / "probe" / "p2.txt").write_text((CORPORA_DIR / "moby_dick" / "chapter_7.txt").read_text())
    (root / "copy").mkdir()
    (root / "copy" / "p1_again.txt").write_text(p1.upper().replace(" ", "  \n "))
    for name in ("probe", "copy"):
        ws.catalog.add_corpus(name, str(root / name))
        pipeline.materialize_corpus(ws.catalog, ws.store, Chunker(ws.embedder.tokenizer), ws.embedder, name)
    ws.catalog.create_retrieval_set("leaky", ["small", "copy"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "leaky", ws.embedder.space)
    data = prepare_training(ws, tiny_spec(steps=6))
    return train_model(ws, data, "retro").info


def test_leakage_filter_moves_the_reading_chunks_but_not_the_first_chunks(ws, leaky):
    text = heldout_text(ws, "probe", SplitConfig(), 64, whole=True)
    plain = evaluate_models(ws, [leaky], text, ["leaky"], k=2)
    filtered = evaluate_models(ws, [leaky], text, ["leaky"], k=2, leakage_filter=True)
    row, frow = plain.rows[1], filtered.rows[1]
    assert row.setting == frow.setting == "set leaky"
    assert row.leaky_share > 0.15 and frow.leaky_share == 0.0  # the copy was read, then dropped
    assert abs(row.bits_per_byte - frow.bits_per_byte) > 1e-4  # the all-chunks number moves
    a, b = plain.scores[(leaky.ref, "set leaky")].chunks, filtered.scores[(leaky.ref, "set leaky")].chunks
    first, reads = plain.buckets["leaky"].rows[FIRST], plain.buckets["leaky"].rows[READS]
    assert len(first) > 0 and len(reads) > 0, "precondition: both kinds of chunk"
    assert row.bpb_first == pytest.approx(a.bits_per_byte(first), abs=1e-12)
    assert row.bpb_reads == pytest.approx(a.bits_per_byte(reads), abs=1e-12)
    # sequence-first chunks read no neighbours: the filter cannot move them
    assert b.bits_per_byte(first) == pytest.approx(a.bits_per_byte(first), abs=1e-9)
    assert abs(b.bits_per_byte(reads) - a.bits_per_byte(reads)) > 1e-4
    # no retrieval is the same text, so it does not move at all
    assert plain.rows[0].bits_per_byte == filtered.rows[0].bits_per_byte


def test_eval_fails_when_too_many_chunks_copy_unless_allowed(ws, leaky, monkeypatch):
    from retro_ops.cli.main import app

    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    args = ["eval", "--model", leaky.ref, "--on", "probe:all", "--set", "leaky", "--max-leaky-share", "0.05"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2  # a refused input, as every `fail` of the CLI
    assert "of evaluated chunks have overlap alpha > 50%" in " ".join(refused.output.split())
    allowed = CliRunner().invoke(app, [*args, "--allow-leakage", "--json"])
    assert allowed.exit_code == 0, allowed.output
    report = json.loads(allowed.stdout)
    assert report["leaky_share_ok"] is False and report["leaky_share"] > 0.05
    assert {c["what"] for c in report["comparisons"]} == {"retrieval vs none"}
    assert {c["unit"] for c in report["comparisons"]} == {"documents"}


def test_intervals_table_keeps_its_columns_when_labels_hold_pipes():
    """Comparison labels read "model | setting"; the Dagster metadata table must still have five
    cells per row (a bare pipe split them into seven, and the UI showed the rows misaligned)."""
    import re
    from types import SimpleNamespace

    from assets.evaluation import _intervals_markdown

    row = SimpleNamespace(a="retro-ops-retro/1 | set web_nt", b="retro-ops-baseline/1 | no retrieval",
                          bucket="all", difference=-0.0028, low=-0.0043, high=-0.0012)
    header, _, line = _intervals_markdown([row]).splitlines()
    cells = lambda text: len(re.split(r"(?<!\\)\|", text.strip().strip("|")))  # noqa: E731
    assert cells(line) == cells(header) == 5
