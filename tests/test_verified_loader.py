"""Every path that turns a catalogued checkpoint into a model verifies each of its files first
(issue #25 item 1). A weights file, `vocab.json` or `config.json` replaced by a valid file of other
values (the unverified loader takes each) is refused, naming the file, by `generate`, `eval`, the
server and the MLflow pyfunc; RETROfit refuses a tampered parent; retraining never registers
tampered weights; a model recorded before checkpoint manifests is verified as far as its record
goes and says what was not covered. A real home (BERT, LanceDB, FAISS, MLflow), tiny models
trained for 2 steps; nothing mocked."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_spec
from safetensors.torch import save_model
from sqlalchemy import update
from typer.testing import CliRunner

from retro_ops.catalog import tables as m
from retro_ops.cli.main import app
from retro_ops.errors import ModelIntegrityError
from retro_ops.lineage.verify import verify
from retro_ops.lineage.views import AuditDB
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.training.checkpoint import (
    CONFIG_FILE, MODEL_FILE, VOCAB_FILE, load_checkpoint, load_config, read_checkpoint,
)
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model
from retro_ops.training.trainer import seeded_model
from retro_ops.training.verified import load_verified
from retro_ops.training.vocab import UNK

runner = CliRunner()
FILES = [MODEL_FILE, VOCAB_FILE, CONFIG_FILE]


@pytest.fixture(scope="module")
def data(ws):
    return prepare_training(ws, tiny_spec(steps=2))


@pytest.fixture(scope="module")
def retro(ws, data):
    return train_model(ws, data, "retro").info


@pytest.fixture(scope="module")
def baseline(ws, data):
    return train_model(ws, data, "baseline").info


def _other_values(path: Path) -> None:
    """Replace one model file by a valid one holding other values: other weights of the same
    shapes; the upper half of the vocabulary's ids moved up by one (still sorted and unique, so
    every answer maps to other tokens); the CCA's relative positions switched (same parameters)."""
    if path.name == MODEL_FILE:
        save_model(seeded_model(load_config(path.parent), 99), str(path))
    elif path.name == VOCAB_FILE:
        ids = json.loads(path.read_text())
        half = len(ids) // 2
        assert ids[half] > UNK
        path.write_text(json.dumps(ids[:half] + [i + 1 for i in ids[half:]]))
    else:
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "cca_positions": not config["cca_positions"]}))


@contextmanager
def tampered(folder: Path, name: str):
    path = folder / name
    original = path.read_bytes()
    try:
        _other_values(path)
        load_checkpoint(folder)  # a valid checkpoint: only the catalog's record tells it apart
        yield path
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("name", FILES)
def test_a_tampered_checkpoint_file_is_refused_by_generate_eval_and_serve(ws, retro, name, monkeypatch):
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    evaluations, deployments = ws.catalog.count(m.EvaluationRecord), len(ws.catalog.deployments())
    with tampered(Path(retro.checkpoint_dir), name) as path:
        said = f"model {retro.ref}: {path} hashes to"
        generated = runner.invoke(app, ["generate", "Call me Ishmael. " * 12, "--model", retro.ref,
                                        "--set", "small", "--max-new-tokens", "2"])
        assert generated.exit_code == 2 and said in generated.output, generated.output
        evaluated = runner.invoke(app, ["eval", "--model", retro.ref, "--set", "small"])
        assert evaluated.exit_code == 2 and said in evaluated.output, evaluated.output
        with pytest.raises(ModelIntegrityError, match=re.escape(said)):
            DeploymentHolder.start(ws, retro.ref, "small", "test://tampered")
        assert [c.what for c in _verify(ws, retro.ref).drift] == [f"checkpoint {name}"]
    assert ws.catalog.count(m.EvaluationRecord) == evaluations  # nothing credited to the model
    assert len(ws.catalog.deployments()) == deployments
    assert load_verified(retro).model is not None  # restored: loads again


def _verify(ws, ref: str):
    db = AuditDB(ws.catalog, ws.store)
    try:
        return verify(db, ref)
    finally:
        db.close()


def _pyfunc(ws, info, **model_config):
    import mlflow.pyfunc

    previous = mlflow.get_registry_uri()
    mlflow.set_registry_uri(ws.settings.mlflow_tracking_uri)  # process-global: restored below
    try:
        return mlflow.pyfunc.load_model(f"models:/{info.mlflow_model_name}/{info.mlflow_model_version}",
                                        model_config=model_config or None)
    finally:
        mlflow.set_registry_uri(previous)


def test_the_pyfunc_refuses_a_tampered_checkpoint_unless_told_otherwise(ws, retro, monkeypatch):
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    [artifact] = {p.parent for p in (ws.settings.home / "mlflow").rglob(MODEL_FILE)
                  if f"{retro.mlflow_run_id}/artifacts/model/" in p.as_posix()}
    assert _pyfunc(ws, retro).unwrap_python_model().model_info.id == retro.id
    for name in FILES:
        with tampered(artifact, name):
            with pytest.raises(ModelIntegrityError, match=rf"model {re.escape(retro.ref)}: \S+/{re.escape(name)} "
                                                          r"hashes to .*allow_unknown_checkpoint"):
                _pyfunc(ws, retro)
    with tampered(artifact, MODEL_FILE):
        allowed = _pyfunc(ws, retro, allow_unknown_checkpoint=True)
        assert allowed.unwrap_python_model().model_info is None  # served, never credited to a model
        answer = allowed.predict(pd.DataFrame({"prompt": ["Call me Ishmael."]}),
                                 params={"retrieval_set": "small", "max_new_tokens": 1})
        assert len(answer) == 1 and "request_id" not in answer  # nothing logged under a model
        monkeypatch.setenv("RETRO_OPS_PYFUNC_ALLOW_UNKNOWN_CHECKPOINT", "1")
        assert _pyfunc(ws, retro).unwrap_python_model().model_info is None


def test_retrofit_refuses_a_tampered_parent(ws, data, baseline):
    with tampered(Path(baseline.checkpoint_dir), MODEL_FILE) as path:
        with pytest.raises(ModelIntegrityError, match=rf"model {re.escape(baseline.ref)}: "
                                                      rf"{re.escape(str(path))} hashes to"):
            train_model(ws, data, "retrofit", parent=baseline)


def _without_manifest(ws, info, **fields):
    """The model's row as migration 0012 leaves one recorded before it (no manifest)."""
    with ws.catalog.session() as s:
        s.execute(update(m.ModelRecord).where(m.ModelRecord.id == info.id).values(
            checkpoint_sha256=None, checkpoint_manifest=None, **fields))
    return ws.catalog.resolve_model(f"model-{info.id}")


def test_a_model_recorded_before_manifests_is_verified_as_far_as_its_record_goes(ws, retro):
    try:
        legacy = _without_manifest(ws, retro)
        assert load_verified(legacy).not_covered == ["manifest"]  # weights, config, vocab digest all checked
        report = _verify(ws, legacy.ref)
        assert report.drift == []
        assert [c.what for c in report.not_covered] == ["checkpoint manifest",
                                                        "checkpoint state.json, optimizer.safetensors"]
        for name, detail in ((MODEL_FILE, "hashes to"), (CONFIG_FILE, "differs from the config the catalog"),
                             (VOCAB_FILE, "vocabulary digest")):
            with tampered(Path(legacy.checkpoint_dir), name) as path:
                with pytest.raises(ModelIntegrityError, match=rf"{re.escape(str(path))} {detail}"):
                    load_verified(legacy)
        older = _without_manifest(ws, retro, vocabulary_digest=None)  # recorded before 0006 too
        assert load_verified(older).not_covered == ["manifest", VOCAB_FILE]
    finally:
        fields = {k: v for k, v in (("checkpoint_sha256", retro.checkpoint_sha256),
                                    ("checkpoint_manifest", retro.checkpoint_manifest),
                                    ("vocabulary_digest", retro.vocabulary_digest))}
        with ws.catalog.session() as s:
            s.execute(update(m.ModelRecord).where(m.ModelRecord.id == retro.id).values(**fields))


def test_the_catalog_records_the_bytes_it_loads(ws, retro):
    files = read_checkpoint(Path(retro.checkpoint_dir))
    assert retro.checkpoint_manifest == files.manifest and set(files.manifest) == set(FILES)
    assert retro.checkpoint_sha256 == files.digest and retro.weights_sha256 == files.manifest[MODEL_FILE]
    edited = replace(retro, checkpoint_manifest={**retro.checkpoint_manifest, VOCAB_FILE: "0" * 64})
    with pytest.raises(ModelIntegrityError, match=r"the catalog's manifest does not hash to the recorded"):
        load_verified(edited)


def test_retraining_a_tampered_model_never_registers_its_weights(ws, data, baseline):
    """Before: the key's record no longer verified, so training resumed the tampered folder (its
    state says it is finished) and registered the tampered weights as a new model version."""
    folder = Path(baseline.checkpoint_dir)
    _other_values(folder / MODEL_FILE)
    forged = read_checkpoint(folder).manifest[MODEL_FILE]
    again = train_model(ws, data, "baseline")
    assert not again.reused and again.info.id != baseline.id
    assert again.info.weights_sha256 == baseline.weights_sha256 != forged  # trained again, from scratch
    [aside] = folder.parent.glob(f"{folder.name}.refused-*")
    assert read_checkpoint(aside).manifest[MODEL_FILE] == forged  # kept for inspection
