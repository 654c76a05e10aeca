"""Checkpoints: safetensors weights + JSON config, never pickle; written atomically.

A checkpoint folder holds `model.safetensors` (weights, tied embedding stored once),
`config.json` (the RetroConfig that made them), and for resuming `optimizer.safetensors` +
`state.json` (step, losses, the optimizer's hyper-parameters). Loading refuses a folder with
anything else in it, so no pickled object can ever be executed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from retro_ops.ids import sha256_hex
from retro_ops.model import Retro, RetroConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
VOCAB_FILE = "vocab.json"
ALLOWED = {MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, VOCAB_FILE}


class CheckpointError(ValueError):
    """A folder that is not a retro-ops checkpoint (or holds files it must not load)."""


@dataclass(frozen=True)
class TrainState:
    step: int
    losses: list[tuple[int, float]]
    extra: dict


def save_checkpoint(folder: Path, model: Retro, *, optimizer: torch.optim.Optimizer | None = None,
                    state: TrainState | None = None, files: dict[str, str] | None = None) -> Path:
    """Write to `folder.tmp`, then replace `folder`: a crash never leaves half a checkpoint.
    `files`: extra JSON documents (e.g. the vocabulary) saved alongside."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, text in (files or {}).items():
        if name not in ALLOWED or not name.endswith(".json"):
            raise CheckpointError(f"{name}: only {', '.join(sorted(ALLOWED))} go in a checkpoint")
        (tmp / name).write_text(text)
    save_model(model, str(tmp / MODEL_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    if optimizer is not None and state is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({
            "step": state.step, "losses": state.losses, "extra": state.extra,
            "optimizer": meta}, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _check_folder(folder: Path) -> None:
    if not (folder / MODEL_FILE).exists() or not (folder / CONFIG_FILE).exists():
        raise CheckpointError(f"{folder}: not a checkpoint (needs {MODEL_FILE} and {CONFIG_FILE})")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in ALLOWED)
    if extra:
        raise CheckpointError(f"{folder}: refusing to load a checkpoint with unexpected files "
                              f"({', '.join(extra)}); only safetensors and JSON are allowed")


def load_config(folder: Path) -> RetroConfig:
    _check_folder(folder)
    return RetroConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))


def load_checkpoint(folder: Path) -> Retro:
    model = Retro(load_config(folder))
    missing, unexpected = load_model(model, str(folder / MODEL_FILE), strict=True)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the config")
    return model.eval()


def load_train_state(folder: Path, model: Retro, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore optimizer moments and step to continue a run exactly where it stopped."""
    if not (folder / STATE_FILE).exists():
        raise CheckpointError(f"{folder}: no training state to resume from")
    if load_config(folder) != model.config:
        raise CheckpointError(f"{folder}: holds a run with another model config; refusing to resume")
    load_model(model, str(folder / MODEL_FILE), strict=True)
    data = json.loads((folder / STATE_FILE).read_text())
    _restore_optimizer(optimizer, load_file(str(folder / OPTIMIZER_FILE)), data["optimizer"])
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
