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
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from retro_ops.durable import fsync_path
from retro_ops.errors import CheckpointError, CrashMode, SimulatedCrash
from retro_ops.ids import sha256_hex
from retro_ops.model import Retro, RetroConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
VOCAB_FILE = "vocab.json"
ALLOWED = {MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, VOCAB_FILE}
CheckpointCrash = Literal["mid_write", "before_swap", "between_renames", "before_cleanup"]
__all__ = ["CheckpointError", "TrainState", "save_checkpoint", "recover_checkpoint",
           "load_checkpoint", "load_config", "load_train_state", "weights_digest"]


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


def _check_safetensors(path: Path) -> None:
    """Refuse, without unpickling anything, a file that is not safetensors (pickle, torch.save)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        kind = "a pickle" if head[:1] == b"\x80" else "a zip (torch.save) archive"
        raise CheckpointError(f"{path}: holds {kind}, not safetensors; refusing to load it "
                              "(unpickling can run arbitrary code)")
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] > size - 8 or head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (no valid header); refusing to load it")


def _check_folder(folder: Path) -> None:
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
    for name in (MODEL_FILE, OPTIMIZER_FILE):
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


def load_checkpoint(folder: Path) -> Retro:
    folder = _readable(folder)
    model = Retro(load_config(folder))
    try:
        missing, unexpected = load_model(model, str(folder / MODEL_FILE), strict=True)
    except (SafetensorError, RuntimeError) as error:  # RuntimeError: shapes differ from config
        raise CheckpointError(f"{folder / MODEL_FILE}: weights do not load ({error})") from error
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the config")
    return model.eval()


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
