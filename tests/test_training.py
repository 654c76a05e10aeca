"""Training on real text end to end: neighbours, RETRO + baseline + RETROfit, checkpoints,
resume after a crash, MLflow lineage, evaluation. Tiny models, a few steps, real everything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from retro_ops.model import RetroConfig
from retro_ops.training.checkpoint import CheckpointError, load_checkpoint
from retro_ops.evaluation.compare import evaluate_models, heldout_text
from retro_ops.training.neighbours import with_distractors, with_self_neighbours
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model, training_data
from retro_ops.training.trainer import TrainConfig, seeded_model, train
from helpers import TINY, tiny_spec

@pytest.fixture(scope="module")
def data(ws):
    return prepare_training(ws, tiny_spec())


@pytest.fixture(scope="module")
def trained(ws, data):
    return {kind: train_model(ws, data, kind) for kind in ("baseline", "retro")}


def mlflow_client(ws) -> MlflowClient:
    uri = ws.settings.mlflow_tracking_uri
    return MlflowClient(uri, registry_uri=uri)  # never the process-global registry


def test_neighbours_exclude_own_document_and_are_cached(ws, data):
    nb, table = data.train_neighbours.neighbours, data.train_table
    members = ws.store.members(data.retriever.version.digest, ["chunk_id", "doc_id"]).to_pylist()
    doc_of = {m["chunk_id"]: m["doc_id"] for m in members}
    for row in range(len(table)):
        for neighbour_id, ok in zip(nb.ids[row], nb.mask[row]):
            if ok:
                assert doc_of[int(neighbour_id)] != table.doc_ids[row]
    # few documents: some chunks find fewer than k other-document hits; those slots are masked
    assert 0.75 < nb.mask.mean() <= 1.0 and nb.tokens.shape[1:] == (2, 128)
    assert (nb.tokens[~nb.mask] == 0).all() and (nb.ids[~nb.mask] == -1).all()
    again = prepare_training(ws, tiny_spec())
    assert not again.train_neighbours.computed_now
    assert again.train_neighbours.key == data.train_neighbours.key
    assert set(data.train_doc_ids).isdisjoint(data.heldout_doc_ids)


def test_a_neighbour_cache_is_present_only_once_its_arrays_are_whole(data, tmp_path):
    """The manifest is written before the arrays: a crash between the two leaves a manifest
    alone, which is not a cache (recomputed, the manifest rewritten); no temp file stays."""
    from retro_ops.training.neighbours import cached_neighbours

    nb = data.train_neighbours.neighbours
    (tmp_path / "k.json").write_text('{"left": "by a crash"}')  # what a crash between the two leaves
    got, computed = cached_neighbours(tmp_path, "k", lambda: (nb, {"chunks": len(nb.ids)}))
    assert computed and got is nb
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.npz"]
    assert json.loads((tmp_path / "k.json").read_text()) == {"chunks": len(nb.ids)}
    again, computed = cached_neighbours(tmp_path, "k", lambda: pytest.fail("the cache is whole"))
    assert not computed and (again.ids == nb.ids).all() and (again.tokens == nb.tokens).all()

def test_self_neighbours_hold_the_very_text_to_predict_in_training_only(data):
    """A seeded half of the training chunks read their own text + true continuation in the last
    slot; the first slot keeps the real neighbour; held-out neighbours are untouched."""
    table, real = data.train_table, data.train_neighbours.neighbours
    mixed = with_self_neighbours(real, table, 0.5, seed=0)
    chosen = (mixed.tokens[:, 1] != real.tokens[:, 1]).any(axis=1)
    assert 0.3 < chosen.mean() < 0.7
    for row in np.flatnonzero(chosen):
        assert (mixed.tokens[row, 1, :64] == table.tokens[row]).all() and mixed.mask[row, 1]
        follows = row + 1 < len(table) and table.doc_ids[row + 1] == table.doc_ids[row]
        expected = table.tokens[row + 1] if follows else np.zeros(64, dtype=np.int64)
        assert (mixed.tokens[row, 1, 64:] == expected).all()  # never another document's text
    assert (mixed.tokens[:, 0] == real.tokens[:, 0]).all() and (mixed.mask[:, 0] == real.mask[:, 0]).all()
    assert (with_self_neighbours(real, table, 0.5, seed=0).tokens == mixed.tokens).all()
    assert with_self_neighbours(real, table, 0.0, seed=0) is real
    # training data carry the spec's self-neighbours (TrainConfig's defaults); held-out data never do
    vocab, train = data.vocab, data.spec.train
    assert (train.self_neighbours, train.self_neighbour_shift, train.self_neighbour_noise) == (
        TrainConfig.self_neighbours, TrainConfig.self_neighbour_shift, TrainConfig.self_neighbour_noise)
    expected = with_distractors(with_self_neighbours(real, table, train.self_neighbours, seed=train.seed,
                                                     shift=train.self_neighbour_shift,
                                                     noise=train.self_neighbour_noise),
                                train.distractor_share, train.seed)
    assert train.distractor_share == TrainConfig.distractor_share
    assert (training_data(data, True).neighbours.tokens == vocab.encode(expected.tokens)).all()
    heldout = data.heldout_neighbours.neighbours
    assert (training_data(data, True, heldout=True).neighbours.tokens == vocab.encode(heldout.tokens)).all()
    with pytest.raises(ValueError, match="self_neighbours"):
        TrainConfig(self_neighbours=1.5)


def running_text(table, row: int) -> tuple[list[int], int]:
    """The tokens of `row`'s document, in order, and where `row`'s chunk starts in them."""
    rows = np.flatnonzero(table.doc_ids == table.doc_ids[row])
    text = [int(t) for r in rows for t in table.tokens[r, :table.n_tokens[r]]]
    start = int(sum(table.n_tokens[r] for r in rows if r < row))
    return text, start


def test_shifted_self_neighbours_are_their_documents_text_elsewhere(data):
    """A shifted copy is a stretch of the chunk's own document (never another's) that starts up
    to `shift` tokens before or after the chunk, in both directions; seeded."""
    table, real = data.train_table, data.train_neighbours.neighbours
    shifted = with_self_neighbours(real, table, 0.5, seed=0, shift=16)
    exact = with_self_neighbours(real, table, 0.5, seed=0)
    chosen = exact.ids[:, 1] != real.ids[:, 1]
    assert (shifted.ids[:, 1] == exact.ids[:, 1]).all() and chosen.any()  # the same chunks chosen
    moves = []
    for row in np.flatnonzero(chosen):
        text, start = running_text(table, row)
        copy = [int(t) for t in shifted.tokens[row, 1] if t]
        begins = [b for b in range(max(0, start - 16), min(len(text), start + 17))
                  if text[b:b + len(copy)] == copy]
        assert begins, f"row {row}: the copy is not a stretch of its own document near the chunk"
        assert len(copy) == min(128, len(text) - begins[0])  # as long as the document allows
        moves.append(begins[0] - start)
    assert min(moves) < 0 < max(moves)
    again = with_self_neighbours(real, table, 0.5, seed=0, shift=16)
    assert (again.tokens == shifted.tokens).all()
    assert (shifted.tokens[:, 0] == real.tokens[:, 0]).all()


def test_noised_self_neighbours_change_about_that_share_of_tokens(data):
    """noise=0.3 drops or replaces about 30% of a copy's tokens: about 70% of the exact copy's
    tokens are still there, in order; the real neighbour slot is untouched."""
    import difflib

    table, real = data.train_table, data.train_neighbours.neighbours
    exact = with_self_neighbours(real, table, 0.5, seed=0)
    noised = with_self_neighbours(real, table, 0.5, seed=0, noise=0.3)
    chosen = np.flatnonzero(exact.ids[:, 1] != real.ids[:, 1])
    matched = total = 0
    for row in chosen:
        a = [int(t) for t in exact.tokens[row, 1] if t]
        b = [int(t) for t in noised.tokens[row, 1] if t]
        matched += sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False)
                       .get_matching_blocks())
        total += len(a)
    assert 0.64 < matched / total < 0.78
    assert (noised.tokens[:, 0] == real.tokens[:, 0]).all()
    with pytest.raises(ValueError, match="noise"):
        with_self_neighbours(real, table, 0.5, seed=0, noise=1.0)
    with pytest.raises(ValueError, match="self_neighbour_shift"):
        TrainConfig(self_neighbour_shift=-1)


def test_loss_decreases_and_checkpoint_round_trips(ws, data, trained):
    retro = trained["retro"]
    losses = [loss for _, loss in retro.result.losses]
    assert losses[-1] < losses[0] - 0.3, losses
    model = load_checkpoint(Path(retro.info.checkpoint_dir))
    again = load_checkpoint(Path(retro.info.checkpoint_dir))
    batch = training_data(data, True).batch(np.arange(3))
    torch.testing.assert_close(model(*batch[:1], batch[2], batch[3])[0],
                               again(*batch[:1], batch[2], batch[3])[0], rtol=0, atol=0)
    assert retro.info.config["retrieval"] and not trained["baseline"].info.config["retrieval"]


def test_trained_checkpoint_keeps_cca_causal(data, trained):
    model = load_checkpoint(Path(trained["retro"].info.checkpoint_dir))
    input_ids, _, neighbours, mask = training_data(data, True).batch(np.arange(2))
    base, _ = model(input_ids, neighbours, mask)
    changed = neighbours.clone()
    changed[:, 1] = torch.randint(1, model.config.vocab_size, changed[:, 1].shape)
    perturbed, _ = model(input_ids, changed, mask)
    boundary = 64 + 63  # neighbours of chunk 1 may first affect its last token
    assert torch.equal(base[:, :boundary], perturbed[:, :boundary])
    assert not torch.allclose(base[:, boundary:], perturbed[:, boundary:])


def test_resume_after_crash_equals_uninterrupted(ws, data, tmp_path):
    config = RetroConfig.from_dict({**TINY.to_dict(), "vocab_size": data.vocab.size})
    spec = TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4)
    straight = seeded_model(config, 0)
    train(straight, training_data(data, True), tmp_path / "straight", spec)
    crashed = seeded_model(config, 0)
    with pytest.raises(RuntimeError, match="simulated crash at step 6"):
        train(crashed, training_data(data, True), tmp_path / "crashed", spec, crash_at_step=6)
    resumed = seeded_model(config, 0)
    result = train(resumed, training_data(data, True), tmp_path / "crashed", spec)
    assert result.resumed_from == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_mlflow_run_records_exact_input_versions(ws, data, trained):
    info = trained["retro"].info
    client = mlflow_client(ws)
    run = client.get_run(info.mlflow_run_id)
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    version = data.retriever.version
    assert set(inputs) >= {"corpus:small", "training-documents:small", "tokenizer",
                           "retrieval-set:small", "faiss-index:small", "training-neighbours",
                           f"embedding-space:{version.embedding_space_id}"}
    corpus = inputs["corpus:small"]
    assert corpus.digest == data.corpus_version.digest[:36]
    assert corpus.source.endswith(f"documents.lance#version={data.corpus_version.documents_lance_version}")
    profile = json.loads(inputs["retrieval-set:small"].profile)
    assert profile["full_digest"] == version.digest
    assert profile["chunks_lancedb_version"] == version.chunks_lance_version
    assert profile["embeddings_lancedb_version"] == version.embeddings_lance_version
    assert json.loads(inputs["faiss-index:small"].profile)["full_digest"] == data.retriever.manifest.sha256
    assert run.data.tags["retro_ops.code_version"]
    assert [d.tags[0].value for d in run.inputs.dataset_inputs][0] == "training"
    registered = client.get_model_version_by_alias("retro-ops-retro", "candidate")
    assert str(registered.version) == info.mlflow_model_version and registered.run_id == run.info.run_id
    assert ws.catalog.model_training_doc_ids(info.id) == sorted(data.train_doc_ids)


def test_identical_inputs_reuse_the_model(ws, data, trained):
    again = train_model(ws, data, "retro")
    assert again.reused and again.info.id == trained["retro"].info.id


def test_retrofit_reproduces_baseline_without_retrieval(ws, data, trained):
    baseline_info = trained["baseline"].info
    fitted = train_model(ws, data, "retrofit", parent=baseline_info)
    assert fitted.result.trainable_parameters < fitted.result.total_parameters * 0.5
    baseline = load_checkpoint(Path(baseline_info.checkpoint_dir))
    model = load_checkpoint(Path(fitted.info.checkpoint_dir))
    input_ids, _, neighbours, mask = training_data(data, True).batch(np.arange(3))
    assert torch.equal(baseline(input_ids)[0], model(input_ids)[0])
    assert not torch.equal(baseline(input_ids)[0], model(input_ids, neighbours, mask)[0])
    assert fitted.info.parent_model_id == baseline_info.id
    run = mlflow_client(ws).get_run(fitted.info.mlflow_run_id)
    assert run.data.params["parent_model"] == baseline_info.ref


def test_evaluation_table(ws, data, trained):
    text = heldout_text(ws, "small", tiny_spec().split, 64)
    assert sorted(text.doc_ids) == sorted(data.heldout_doc_ids)
    report = evaluate_models(ws, [trained["baseline"].info, trained["retro"].info], text, ["small"], k=2)
    settings = [(r.kind, r.setting) for r in report.rows]
    assert settings == [("baseline", "no retrieval"), ("retro", "no retrieval"), ("retro", "set small"),
                        ("retro", "control: small shuffled"), ("retro", "control: oracle")]
    assert all(0 < r.bits_per_byte < 10 and r.tokens > 0 for r in report.rows)
    run = mlflow_client(ws).get_run(report.mlflow_run_id)
    assert "bpb.retro.set_small" in run.data.metrics


def test_only_safetensors_and_json_load(trained, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(trained["retro"].info.checkpoint_dir, folder)
    (folder / "evil.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match=r"unexpected files \(evil\.pkl\)"):
        load_checkpoint(folder)


def test_resume_refuses_a_different_config(data, tmp_path):
    config = RetroConfig.from_dict({**TINY.to_dict(), "vocab_size": data.vocab.size})
    spec = TrainConfig(steps=4, batch_size=2, lr=3e-3, warmup_steps=1, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(seeded_model(config, 0), training_data(data, True), tmp_path / "run", spec, crash_at_step=3)
    other = RetroConfig.from_dict({**config.to_dict(), "d_ff": 128})
    with pytest.raises(CheckpointError, match="holds a run with another model config"):
        train(seeded_model(other, 0), training_data(data, True), tmp_path / "run", spec)


def test_cached_generation_equals_full_forward_windows(ws, data, trained):
    """The Generator's cached decoding gives the tokens a full forward pass over each window
    gives (the way it generated before the caches), across a window slide, with retrieval."""
    from retro_ops.features.chunking import load_tokenizer
    from retro_ops.serving.generator import Generator

    model = load_checkpoint(Path(trained["retro"].info.checkpoint_dir))
    tokenizer = load_tokenizer(ws.embedder.space.model_path)
    retriever = ws.retriever("small")
    generator = Generator(model, data.vocab, tokenizer, retriever)
    n, m = model.config.seq_len, model.config.chunk_size
    prompt = "Call me Ishmael. Some years ago, never mind how long precisely, " * 8
    result = generator.generate(prompt, max_new_tokens=m + 8, temperature=0)
    assert result.prompt_tokens + result.new_tokens > n + m  # the window slid at least once

    ids = data.vocab.encode(np.asarray(tokenizer(prompt, add_special_tokens=False)["input_ids"])).tolist()
    values = []
    for _ in range(result.new_tokens):
        while len(values) < len(ids) // m:
            values.append(generator._retrieve(ids[len(values) * m:(len(values) + 1) * m], 0)[1])
        start = max(0, (len(ids) - n + m - 1) // m * m) if len(ids) > n else 0
        used = values[start // m:start // m + (len(ids) - start) // m]
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[start:]]), torch.from_numpy(np.stack(used)[None]))
        ids.append(int(logits[0, -1].argmax()))
    reference = ids[result.prompt_tokens:]
    assert result.text == tokenizer.decode(data.vocab.decode(np.asarray(reference)).tolist())
    assert len(result.retrievals) == len(ids[:-1]) // m


def test_a_safetensors_header_of_128_mod_256_bytes_is_not_taken_for_a_pickle(tmp_path):
    """The header length opens the file; 0x80 there is the pickle opcode's byte too (the demo's
    RETROfit optimizer file, 7,040 header bytes, was refused as a pickle)."""
    import struct

    from safetensors.torch import save_file

    from retro_ops.training.checkpoint import _check_safetensors

    path = tmp_path / "t.safetensors"
    for n in range(1, 400):
        save_file({"x" * n: torch.zeros(1)}, str(path))
        if struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128:
            break
    assert path.read_bytes()[:1] == b"\x80", "precondition: the file starts with 0x80"
    _check_safetensors(path)  # no error
    path.write_bytes(b"\x80\x04K\x01." + b"\x00" * 20)
    with pytest.raises(CheckpointError, match="holds a pickle"):
        _check_safetensors(path)


def test_standalone_weight_trains_retros_decoder_alone_and_leaves_a_retrofit_unchanged(data, tmp_path):
    """The standalone loss (the same batch without neighbours) changes what RETRO from scratch
    learns, toward a decoder that predicts better alone; a RETROfit's decoder is frozen, so
    the weight changes nothing there, bit for bit."""
    config = RetroConfig.from_dict({**TINY.to_dict(), "vocab_size": data.vocab.size})
    plain_batches = training_data(data, False)
    rows = np.arange(min(8, len(plain_batches.sequences)))

    def fit(weight: float, trainable: bool) -> torch.nn.Module:
        model = seeded_model(config, 0)
        spec = TrainConfig(steps=24, batch_size=4, lr=3e-3, warmup_steps=2, standalone_weight=weight)
        train(model, training_data(data, True), tmp_path / f"{weight}-{trainable}", spec,
              trainable=model.retrieval_parameters() if trainable else None)
        return model

    def alone(model) -> float:
        input_ids, targets, _, _ = plain_batches.batch(rows)
        with torch.no_grad():
            return float(model(input_ids, None, None, targets)[1])

    without, with_standalone = fit(0.0, False), fit(3.0, False)
    assert alone(with_standalone) < alone(without)
    frozen_a, frozen_b = fit(0.0, True), fit(3.0, True)
    for (name, a), (_, b) in zip(frozen_a.state_dict().items(), frozen_b.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="standalone_weight"):
        TrainConfig(standalone_weight=-1.0)
