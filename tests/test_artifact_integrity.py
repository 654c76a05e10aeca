"""Atomic artifacts under real faults: a child process SIGKILLed at seeded points of an index
publish, a checkpoint save and training; concurrent publishers; indices copied between sets or
forged; checkpoints carrying a real pickle payload. After every kill, the rerun must end in
exactly the state an uninterrupted run leaves (same files, same bytes, same tensors)."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retro_ops.errors import CheckpointError, IndexIntegrityError
from retro_ops.retrieval.index.build import IndexConfig, build_index
from retro_ops.ids import sha256_hex
from retro_ops.retrieval.index.publish import (
    CURRENT, INDEX_FILE, MANIFEST_FILE, IndexManifest, current_build, index_root, publish_index, serialize,
)
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.retriever import Retriever
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors
from retro_ops.training.checkpoint import (
    MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, load_checkpoint, save_checkpoint,
)
from retro_ops.training.trainer import seeded_model, train
from fault_children import CONFIG, SPEC, synthetic_data

SEED = 11  # picks the step each training kill lands on
TESTS = Path(__file__).resolve().parent
IVF = IndexConfig(factory="IVF3,Flat", nprobe=2)


def run_child(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a fresh interpreter (this worktree's code, the tests folder importable)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def assert_killed(child: subprocess.CompletedProcess) -> None:
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr[-2000:])


# -- index publish ---------------------------------------------------------------------------

PUBLISH_CHILD = """
import sys
from pathlib import Path
from retro_ops.catalog import Catalog
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.index.build import IndexConfig
catalog_url, lancedb_uri, indices, point = sys.argv[1:]
index_retrieval_set(Catalog.open(catalog_url), FeatureStore(lancedb_uri), Path(indices), "small",
                    384, config=IndexConfig(factory="IVF3,Flat", nprobe=2), crash_at=point,
                    crash_mode="kill")
"""


@pytest.fixture(scope="module")
def published(indexed_home, embedder):
    settings, catalog, store = indexed_home
    version = build_retrieval_set_version(catalog, store, "small", embedder.space).version
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    ids, vectors = retrieval_set_vectors(store, version, 384)
    reference = serialize(build_index(vectors, ids, IVF).index)  # what an uninterrupted IVF build writes
    return version, reference


def open_retriever(indexed_home, embedder) -> Retriever:
    settings, catalog, store = indexed_home
    return Retriever.open(catalog, store, embedder, settings.indices_dir, "small")


@pytest.mark.parametrize("point", [
    "before_flip",  # the rest run with `-m slow` (each kill: a fresh interpreter)
    pytest.param("mid_pointer_write", marks=pytest.mark.slow),
    pytest.param("mid_index_write", marks=pytest.mark.slow),
    pytest.param("after_index_write", marks=pytest.mark.slow),
    pytest.param("after_flip", marks=pytest.mark.slow),
])
def test_killed_publish_keeps_previous_index_and_rerun_ends_as_uninterrupted(
        indexed_home, embedder, published, point):
    settings, catalog, store = indexed_home
    root = index_root(settings.indices_dir, "small")
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)  # exact index current
    before, listing = current_build(root), set(os.listdir(root))

    assert_killed(run_child(["-c", PUBLISH_CHILD, settings.catalog_url, settings.lancedb_uri,
                             str(settings.indices_dir), point]))
    left = set(os.listdir(root)) - listing
    assert left, "the kill left nothing behind: it did not hit the publish"
    serving = open_retriever(indexed_home, embedder)  # whatever CURRENT names loads, verified
    if point == "after_flip":  # the new build was complete and current when the kill came
        assert current_build(root) != before and serving.manifest.factory == "IVF3,Flat"
    else:
        assert current_build(root) == before and serving.manifest.sha256 == before[1]
    assert serving.retrieve(["the whale"], k=1)[0]

    rerun = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384, config=IVF)
    new = rerun.published.build
    assert set(os.listdir(root)) == listing | {new}  # no temp, pointer, marker or orphan build
    assert current_build(root) == (new, rerun.manifest.sha256)
    assert (root / new / INDEX_FILE).read_bytes() == published[1]
    record = catalog.trusted_index_build("small", published[0].id, rerun.manifest.sha256,
                                         rerun.manifest.digest())
    assert record.published and record.build_dir == str(root / new)
    assert open_retriever(indexed_home, embedder).manifest.sha256 == rerun.manifest.sha256


def test_concurrent_publishes_never_share_a_temp_pointer(tmp_path, published):
    """Threads publishing at once into one root (a shared `CURRENT.tmp` made one of two
    `os.replace` calls fail): every publish succeeds and the pointer is always whole."""
    root, settled, data = tmp_path / "set", [], published[1]
    fields = {name: 0 for name in IndexManifest.__dataclass_fields__}
    fields.update(factory="IVF3,Flat", metric="inner_product", embedding_space_id="space",
                  retrieval_set="set", retrieval_set_digest="digest", sha256=sha256_hex(data),
                  search_params={}, faiss_version="", created_at="", notes=[], build_key="",
                  route="full", extra_files={})
    manifest = IndexManifest(**fields)

    def publish_many() -> None:
        for _ in range(12):
            settled.append(publish_index(root, data, manifest).build)

    threads = [threading.Thread(target=publish_many) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(settled) == 36
    build, sha = current_build(root)
    assert build in settled and sha == manifest.sha256
    assert sorted(p.name for p in root.iterdir() if not p.is_dir()) == [".lock", CURRENT]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(settled)


def test_corrupt_pointer_is_an_integrity_error_and_a_rebuild_repairs_it(indexed_home, embedder,
                                                                       published):
    settings, catalog, store = indexed_home
    root = index_root(settings.indices_dir, "small")
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    (root / CURRENT).write_bytes(b'{"build": "20261201T00')  # a torn write
    with pytest.raises(IndexIntegrityError, match=r"CURRENT: not a valid pointer \(Unterminated"):
        open_retriever(indexed_home, embedder)
    (root / CURRENT).write_text("[1, 2]")
    with pytest.raises(IndexIntegrityError, match=r"CURRENT: not a valid pointer \(a JSON object"):
        open_retriever(indexed_home, embedder)
    repaired = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    assert not repaired.reused and current_build(root)[0] == repaired.published.build
    assert open_retriever(indexed_home, embedder).retrieve(["the whale"], k=1)[0]


def test_an_index_is_trusted_only_under_its_own_set(indexed_home, embedder, published):
    """Copying set `small`'s build under another set's folder, or editing its manifest to name
    that set, is refused: the catalog binds (set, version, index sha256, manifest sha256)."""
    settings, catalog, store = indexed_home
    catalog.create_retrieval_set("other", ["small"])
    root = index_root(settings.indices_dir, "small")
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    build, _ = current_build(root)
    other = index_root(settings.indices_dir, "other")
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    shutil.copytree(root / build, other / build)
    shutil.copy(root / CURRENT, other / CURRENT)
    with pytest.raises(IndexIntegrityError, match=r"built for retrieval set 'small', found under 'other'"):
        Retriever.open(catalog, store, embedder, settings.indices_dir, "other")
    manifest = json.loads((other / build / MANIFEST_FILE).read_text())
    (other / build / MANIFEST_FILE).write_text(json.dumps({**manifest, "retrieval_set": "other"}))
    with pytest.raises(IndexIntegrityError, match=r"no build of retrieval set 'other' .* did not build"):
        Retriever.open(catalog, store, embedder, settings.indices_dir, "other")


def test_build_recorded_without_a_manifest_digest_is_refused_until_rebuilt(indexed_home, embedder,
                                                                          published):
    """Builds recorded before migration 0005 carry no manifest digest: fail closed, then heal."""
    from retro_ops.catalog import tables as m

    settings, catalog, store = indexed_home
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    with catalog.session() as s:
        s.query(m.IndexBuild).update({m.IndexBuild.manifest_sha256: None})
    with pytest.raises(IndexIntegrityError, match=r"materialize --set small"):
        open_retriever(indexed_home, embedder)
    rebuilt = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    assert not rebuilt.reused
    assert open_retriever(indexed_home, embedder).manifest.sha256 == rebuilt.manifest.sha256


def test_forged_index_is_refused_while_a_loaded_one_keeps_serving(indexed_home, embedder, published):
    """A consistent forgery (another valid FAISS index, its sha256 written into the manifest and
    CURRENT) passes every file check but not the catalog's. A Retriever already holding the
    verified index keeps answering; a new open fails closed (never an older build: it may hold
    chunks excluded since); `index_retrieval_set` rebuilds rather than reuse the forgery."""
    settings, catalog, store = indexed_home
    root = index_root(settings.indices_dir, "small")
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    serving = open_retriever(indexed_home, embedder)
    build, _ = current_build(root)
    ids, vectors = retrieval_set_vectors(store, published[0], 384)
    forged = serialize(build_index(np.roll(vectors, 1, axis=0), ids).index)  # every id shifted
    manifest = json.loads((root / build / MANIFEST_FILE).read_text())
    (root / build / INDEX_FILE).write_bytes(forged)
    (root / build / MANIFEST_FILE).write_text(json.dumps({**manifest, "sha256": sha256_hex(forged)}))
    (root / CURRENT).write_text(json.dumps({"build": build, "sha256": sha256_hex(forged)}))
    with pytest.raises(IndexIntegrityError, match=r"no build of retrieval set 'small' with index sha256"):
        open_retriever(indexed_home, embedder)

    member = store.members(published[0].digest, ["chunk_id", "text"]).to_pylist()[10]
    assert serving.retrieve([member["text"]], k=1)[0][0].chunk_id == member["chunk_id"]
    repaired = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    assert not repaired.reused and repaired.published.build != build
    reopened = open_retriever(indexed_home, embedder)
    assert reopened.retrieve([member["text"]], k=1)[0][0].chunk_id == member["chunk_id"]


# -- checkpoints and training ----------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run: the state every killed-and-resumed run must reach."""
    folder = tmp_path_factory.mktemp("straight") / "ckpt"
    train(seeded_model(CONFIG, 0), synthetic_data(), folder, SPEC)
    return folder


def saved_step(folder: Path) -> int:
    """The step of the checkpoint a reader gets (the previous one while `.old` stands in)."""
    readable = folder if folder.exists() else folder.with_name(folder.name + ".old")
    load_checkpoint(folder)  # loadable, whichever it is
    return json.loads((readable / STATE_FILE).read_text())["step"]


@pytest.mark.parametrize("point", [
    "mid_step", "between_renames",  # the rest run with `-m slow` (each kill: a fresh interpreter)
    pytest.param("mid_write", marks=pytest.mark.slow),
    pytest.param("before_swap", marks=pytest.mark.slow),
    pytest.param("before_cleanup", marks=pytest.mark.slow),
])
def test_killed_training_resumes_to_bit_identical_weights(straight, tmp_path, point):
    rng = random.Random(f"{SEED}-{point}")
    # mid_step: die before a step between two checkpoints; otherwise inside the save at step 8
    step = rng.randrange(5, 8) if point == "mid_step" else rng.randrange(4, 8)
    folder = tmp_path / "ckpt"
    assert_killed(run_child([str(TESTS / "fault_children.py"), str(folder), str(step), point]))
    previous = saved_step(folder)
    assert previous == (8 if point == "before_cleanup" else 4)

    result = train(seeded_model(CONFIG, 0), synthetic_data(), folder, SPEC)
    assert result.resumed_from == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp, no .old
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        ours, theirs = load_file(str(folder / name)), load_file(str(straight / name))
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    assert json.loads((folder / STATE_FILE).read_text()) == json.loads((straight / STATE_FILE).read_text())


def test_leftover_old_and_tmp_do_not_break_the_next_save(tmp_path):
    folder = tmp_path / "ckpt"
    model = seeded_model(CONFIG, 0)
    save_checkpoint(folder, model)
    for leftover in ("ckpt.old", "ckpt.tmp"):  # what a save killed before its cleanup leaves
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / MODEL_FILE).write_bytes(b"stale")
    save_checkpoint(folder, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(load_checkpoint(folder).lm_head.weight, model.lm_head.weight)


class Payload:
    """A real malicious pickle: unpickling it creates `sentinel` (it could run anything)."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))  # the payload is live: unpickling runs it
    assert proof.exists()

    sentinel = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, seeded_model(CONFIG, 0))
    clean = {p.name: p.read_bytes() for p in folder.iterdir()}

    def restore() -> None:
        shutil.rmtree(folder)
        folder.mkdir()
        for name, data in clean.items():
            (folder / name).write_bytes(data)

    (folder / MODEL_FILE).write_bytes(pickle.dumps(Payload(sentinel)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: holds a pickle, not safetensors"):
        load_checkpoint(folder)
    torch.save(Payload(sentinel), folder / MODEL_FILE)  # what `torch.save(model)` would leave
    with pytest.raises(CheckpointError, match=r"holds a zip \(torch\.save\) archive, not safetensors"):
        load_checkpoint(folder)
    restore()
    torch.save(Payload(sentinel), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"unexpected files \(pytorch_model\.bin\)"):
        load_checkpoint(folder)
    restore()
    (folder / MODEL_FILE).rename(tmp_path / "elsewhere.safetensors")
    (folder / MODEL_FILE).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is a link or a folder"):
        load_checkpoint(folder)
    restore()
    (folder / MODEL_FILE).write_bytes((6).to_bytes(8, "little") + b"{}    ")  # valid, but empty
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not load"):
        load_checkpoint(folder)
    assert not sentinel.exists()
