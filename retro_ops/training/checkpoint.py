"""Checkpoints: safetensors weights + JSON config, never pickle; written atomically.

A checkpoint folder holds `model.safetensors` (weights, tied embedding stored once),
`config.json` (the RetroConfig that made them), and for resuming `optimizer.safetensors` +
`state.json` (step, losses, the optimizer's hyper-parameters). Loading refuses a folder with
anything else in it, a link, or a weights file that is not safetensors (a pickle or a
torch.save archive is named as such and never opened), so no pickled object can ever run.

A save writes `<folder>.tmp`, fsyncs it, moves the previous checkpoint to `<folder>.old`, renames
the new one into place, fsyncs the parent and removes `.old`. A save killed at any point leaves
either the previous or the new checkpoint complete: readers fall back to `.old` during the one
moment `<folder>` is missing, and the next save or resume (`recover_checkpoint`) restores it.

A model is made of three files (`MODEL_FILES`: weights, config, vocabulary). `read_checkpoint`
reads each of them once; its manifest (file -> sha256) and the model, config and vocabulary are
all derived from those same bytes, so what is hashed is what is loaded (no second read a file
could change between). The catalog records the manifest and `manifest_digest` of it; the
optimizer and `state.json` only resume an unfinished run, are never read to make a model, and
are not part of it (the registered MLflow artifact carries the three model files only).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, load_file, load_model, save_file, save_model

from retro_ops.durable import fsync_path
from retro_ops.errors import CheckpointError, CrashMode, SimulatedCrash
from retro_ops.ids import sha256_hex
from retro_ops.model import Retro, RetroConfig
from retro_ops.training.vocab import Vocabulary

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
VOCAB_FILE = "vocab.json"
ALLOWED = {MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, VOCAB_FILE}
MODEL_FILES = (CONFIG_FILE, MODEL_FILE, VOCAB_FILE)  # what a model is loaded from, all hashed
CheckpointCrash = Literal["mid_write", "before_swap", "between_renames", "before_cleanup"]
__all__ = ["CheckpointError", "CheckpointFiles", "TrainState", "save_checkpoint", "recover_checkpoint",
           "read_checkpoint", "load_checkpoint", "load_config", "load_train_state", "manifest_digest",
           "weights_digest"]


@dataclass(frozen=True)
class TrainState:
    step: int
    losses: list[tuple[int, float]]
    extra: dict


def _siblings(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")


def recover_checkpoint(folder: Path) -> list[str]:
    """Finish what a save killed midway left (no-op when none was): restore the previous
    checkpoint when it was moved aside and the new one never moved in, remove `.tmp`/`.old`.
    Returns the names removed or restored. Only the writer (a save, a resume) calls this."""
    tmp, old = _siblings(folder)
    done = []
    if old.is_dir() and not folder.exists():
        os.replace(old, folder)  # the new checkpoint was not in place: the previous one stays
        done.append(old.name)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
            done.append(leftover.name)
    if done:
        fsync_path(folder.parent)
    return done


def save_checkpoint(folder: Path, model: Retro, *, optimizer: torch.optim.Optimizer | None = None,
                    state: TrainState | None = None, files: dict[str, str] | None = None,
                    crash_at: CheckpointCrash | None = None, crash_mode: CrashMode = "raise") -> Path:
    """Write to `folder.tmp`, then replace `folder`: a crash never leaves half a checkpoint.
    `files`: extra JSON documents (e.g. the vocabulary) saved alongside. `crash_at`/`crash_mode`:
    a test hook (`SimulatedCrash.at`)."""
    for name in files or {}:
        if name not in ALLOWED or not name.endswith(".json"):
            raise CheckpointError(f"{name}: only {', '.join(sorted(ALLOWED))} go in a checkpoint")
    recover_checkpoint(folder)  # a leftover .old or .tmp would make this save fail
    tmp, old = _siblings(folder)
    tmp.mkdir(parents=True)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    save_model(model, str(tmp / MODEL_FILE))
    if crash_at == "mid_write":
        SimulatedCrash.at(f"while writing checkpoint {folder}", crash_mode)
    (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    if optimizer is not None and state is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({
            "step": state.step, "losses": state.losses, "extra": state.extra,
            "optimizer": meta}, indent=1))
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if crash_at == "before_swap":
        SimulatedCrash.at(f"before replacing checkpoint {folder}", crash_mode)
    if folder.exists():
        os.replace(folder, old)
    if crash_at == "between_renames":
        SimulatedCrash.at(f"with checkpoint {folder} moved aside", crash_mode)
    os.replace(tmp, folder)
    fsync_path(folder.parent)
    if crash_at == "before_cleanup":
        SimulatedCrash.at(f"before removing {old.name}", crash_mode)
    if old.exists():
        shutil.rmtree(old)
        fsync_path(folder.parent)
    return folder


def _readable(folder: Path) -> Path:
    """`folder`, or the previous checkpoint a save moved aside when it died before moving the
    new one in (until the writer's `recover_checkpoint` puts it back)."""
    old = _siblings(folder)[1]
    return old if not folder.exists() and old.is_dir() else folder


def _check_safetensors(path: Path, data: bytes | None = None) -> None:
    """Refuse, without unpickling anything, a file that is not safetensors (pickle, torch.save).
    `data`: the file's bytes when already read (the check is then on exactly what will load)."""
    if data is None:
        with open(path, "rb") as handle:
            head = handle.read(9)
        size = path.stat().st_size
    else:
        head, size = data[:9], len(data)
    # a safetensors file opens with its header's length (8 bytes, little-endian) and then "{": a
    # length of 128 mod 256 starts with 0x80, so the header is checked before the pickle opcode
    if len(head) >= 9 and struct.unpack("<Q", head[:8])[0] <= size - 8 and head[8:9] == b"{":
        return
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        kind = "a pickle" if head[:1] == b"\x80" else "a zip (torch.save) archive"
        raise CheckpointError(f"{path}: holds {kind}, not safetensors; refusing to load it "
                              "(unpickling can run arbitrary code)")
    raise CheckpointError(f"{path}: not a safetensors file (no valid header); refusing to load it")


def _check_folder(folder: Path, *, check_weights: bool = True) -> None:
    if not (folder / MODEL_FILE).exists() or not (folder / CONFIG_FILE).exists():
        raise CheckpointError(f"{folder}: not a checkpoint (needs {MODEL_FILE} and {CONFIG_FILE})")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in ALLOWED)
    if extra:
        raise CheckpointError(f"{folder}: refusing to load a checkpoint with unexpected files "
                              f"({', '.join(extra)}); only safetensors and JSON are allowed")
    links = sorted(p.name for p in folder.iterdir() if p.is_symlink() or not p.is_file())
    if links:
        raise CheckpointError(f"{folder}: refusing to load a checkpoint whose {', '.join(links)} "
                              "is a link or a folder, not a plain file")
    for name in (MODEL_FILE, OPTIMIZER_FILE) if check_weights else (OPTIMIZER_FILE,):
        if (folder / name).exists():
            _check_safetensors(folder / name)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"{path}: unreadable safetensors ({error})") from error


def load_config(folder: Path) -> RetroConfig:
    folder = _readable(folder)
    _check_folder(folder)
    return RetroConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))


def manifest_digest(manifest: dict[str, str]) -> str:
    """The checkpoint's digest: sha256 over its manifest, one `name sha256` line per file, sorted."""
    return sha256_hex("".join(f"{name} {sha}\n" for name, sha in sorted(manifest.items())))


@dataclass(frozen=True)
class CheckpointFiles:
    """The model files of a checkpoint, read once: hashed, checked and loaded from these bytes."""

    folder: Path
    data: dict[str, bytes]  # MODEL_FILES present in the folder -> their bytes
    manifest: dict[str, str] = field(init=False)  # name -> sha256 of exactly those bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest", {n: sha256_hex(b) for n, b in sorted(self.data.items())})

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    def _json(self, name: str):
        try:
            return json.loads(self.data[name])
        except KeyError:
            raise CheckpointError(f"{self.folder / name}: missing from the checkpoint") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{self.folder / name}: not valid JSON ({error})") from error

    def config(self) -> RetroConfig:
        try:
            return RetroConfig.from_dict(self._json(CONFIG_FILE))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{self.folder / CONFIG_FILE}: not a model config ({error})") from error

    def vocabulary(self) -> Vocabulary:
        try:
            return Vocabulary(np.asarray(self._json(VOCAB_FILE), dtype=np.int64))
        except (TypeError, ValueError, IndexError) as error:
            raise CheckpointError(f"{self.folder / VOCAB_FILE}: not a vocabulary ({error})") from error

    def model(self) -> Retro:
        path = self.folder / MODEL_FILE
        model = Retro(self.config())
        try:
            _assign(model, load_tensors(self.data[MODEL_FILE]))
        except (SafetensorError, RuntimeError) as error:  # RuntimeError: shapes differ from config
            raise CheckpointError(f"{path}: weights do not load ({error})") from error
        return model.eval()


def _assign(model: Retro, tensors: dict[str, torch.Tensor]) -> None:
    """Load `tensors` into `model` strictly; a tied parameter (the LM head) is stored once."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in tensors if name in state}
    missing = [name for name in missing if state[name].data_ptr() not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def read_checkpoint(folder: Path) -> CheckpointFiles:
    """Check the folder (names, links, no pickle) and read its model files once."""
    folder = _readable(folder)
    _check_folder(folder, check_weights=False)
    data = {name: (folder / name).read_bytes() for name in MODEL_FILES if (folder / name).is_file()}
    _check_safetensors(folder / MODEL_FILE, data[MODEL_FILE])
    return CheckpointFiles(folder, data)


def load_checkpoint(folder: Path) -> Retro:
    """The model of a checkpoint, unverified: for training's own folders. A catalogued model is
    loaded with `training.verified.load_verified`, which checks every file against the catalog."""
    return read_checkpoint(folder).model()


def load_train_state(folder: Path, model: Retro, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore optimizer moments and step to continue a run exactly where it stopped."""
    if not (folder / STATE_FILE).exists():
        raise CheckpointError(f"{folder}: no training state to resume from")
    if load_config(folder) != model.config:
        raise CheckpointError(f"{folder}: holds a run with another model config; refusing to resume")
    try:
        load_model(model, str(folder / MODEL_FILE), strict=True)
    except SafetensorError as error:
        raise CheckpointError(f"{folder / MODEL_FILE}: unreadable safetensors ({error})") from error
    data = json.loads((folder / STATE_FILE).read_text())
    _restore_optimizer(optimizer, _tensors(folder / OPTIMIZER_FILE), data["optimizer"])
    return TrainState(data["step"], [tuple(x) for x in data["losses"]], data["extra"])


def weights_digest(folder: Path) -> str:
    return sha256_hex((folder / MODEL_FILE).read_bytes())


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
