"""Train RETRO (or its baseline) on chunk-aligned sequences with precomputed neighbours.

Deterministic on CPU with a seed: the batch of step s is a pure function of (seed, s), so a run
resumed from its last checkpoint after a crash sees exactly the batches it would have seen, and
a run killed anywhere (mid-step, mid-save) resumes to bit-identical weights: the checkpoint save
is atomic and the resume first recovers what a killed save left (`recover_checkpoint`).
RETROfitting freezes a trained baseline's decoder and trains only the encoder and the CCA layers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from retro_ops.model import Retro, RetroConfig
from retro_ops.errors import CrashMode, SimulatedCrash
from retro_ops.training.checkpoint import (
    STATE_FILE, CheckpointCrash, TrainState, load_train_state, recover_checkpoint,
    save_checkpoint,
)
from retro_ops.training.config import TrainConfig
from retro_ops.training.data import Sequences
from retro_ops.training.neighbours import Neighbours

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainingData:
    sequences: Sequences
    neighbours: Neighbours | None  # None for the baseline

    def batch(self, rows: np.ndarray, device: torch.device | None = None):
        """(input_ids, targets, neighbours, neighbour_mask) tensors for these sequence rows, on
        `device` (default: the CPU)."""
        seq = self.sequences
        input_ids = torch.from_numpy(seq.input_ids[rows]).to(device)
        targets = torch.from_numpy(seq.targets[rows]).to(device)
        if self.neighbours is None:
            return input_ids, targets, None, None
        index = seq.chunk_index[rows]  # (B, U), -1 = padding chunk
        safe = np.where(index < 0, 0, index)
        tokens = self.neighbours.tokens[safe]  # (B, U, k, 2m)
        mask = self.neighbours.mask[safe] & (index >= 0)[..., None]  # (B, U, k)
        return input_ids, targets, torch.from_numpy(tokens).to(device), torch.from_numpy(mask).to(device)


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[tuple[int, float]]
    tokens_per_second: float
    seconds: float
    resumed_from: int = 0
    trainable_parameters: int = 0
    total_parameters: int = 0
    extra: dict = field(default_factory=dict)


def batch_rows(seed: int, step: int, n_sequences: int, batch_size: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).choice(n_sequences, batch_size,
                                                      replace=n_sequences < batch_size)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr/10 at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def training_objective(model: Retro, input_ids: torch.Tensor, targets: torch.Tensor,
                       neighbours: torch.Tensor | None, mask: torch.Tensor | None,
                       standalone_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to log, the loss to minimise): a RETRO reading neighbours also minimises
    `standalone_weight` times the same batch's loss without them (`TrainConfig`), the two
    sharing the decoder layers below the first CCA (`Retro.losses`)."""
    if standalone_weight > 0 and neighbours is not None and model.encoder is not None:
        loss, alone = model.losses(input_ids, neighbours, mask, targets)
        return loss, loss + standalone_weight * alone
    loss = model.loss(input_ids, neighbours, mask, targets)
    return loss, loss


def train(model: Retro, data: TrainingData, folder: Path, config: TrainConfig, *,
          trainable: list[torch.nn.Parameter] | None = None, progress: Progress | None = None,
          crash_at_step: int | None = None, on_log: Callable[[int, float], None] | None = None,
          log_every: int = 10, files: dict[str, str] | None = None,
          crash_in_save: CheckpointCrash | None = None, crash_mode: CrashMode = "raise") -> TrainResult:
    """Train in place, checkpointing to `folder`; resumes if `folder` holds a partial run.
    Test hooks: `crash_at_step` crashes before that step runs or, with `crash_in_save`, inside
    the first checkpoint save after it; `crash_mode="kill"` makes it a real SIGKILL."""
    params = trainable if trainable is not None else list(model.parameters())
    trainable_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))
    state = TrainState(0, [], {})
    recover_checkpoint(folder)
    if (folder / STATE_FILE).exists():
        state = load_train_state(folder, model, optimizer)
    start, losses = state.step, list(state.losses)
    tokens, started = 0, time.perf_counter()
    device = next(model.parameters()).device  # batches follow the model (CPU, or a GPU)
    # a RETROfit's decoder is frozen: its standalone loss has nothing to train
    standalone = config.standalone_weight if trainable is None else 0.0
    model.train()
    for step in range(start, config.steps):
        if crash_at_step is not None and step == crash_at_step and crash_in_save is None:
            SimulatedCrash.at(f"at step {step}", crash_mode)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        input_ids, targets, neighbours, mask = data.batch(
            batch_rows(config.seed, step, len(data.sequences), config.batch_size), device)
        loss, objective = training_objective(model, input_ids, targets, neighbours, mask, standalone)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        tokens += int((targets != -100).sum())
        if step % log_every == 0 or step == config.steps - 1:
            losses.append((step, loss.item()))
            if on_log:
                on_log(step, loss.item())
        if progress:
            progress(step + 1, config.steps)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            crash = crash_in_save if crash_at_step is not None and step >= crash_at_step else None
            save_checkpoint(folder, model, optimizer=optimizer, state=TrainState(step + 1, losses, {}),
                            files=files, crash_at=crash, crash_mode=crash_mode)
    seconds = time.perf_counter() - started
    model.eval()
    return TrainResult(folder, losses, tokens / seconds if seconds > 0 else 0.0, seconds, start,
                       sum(p.numel() for p in params), model.num_parameters())


def seeded_model(config: RetroConfig, seed: int) -> Retro:
    """The same seed gives the same initial weights, and RETRO's decoder starts exactly where
    its baseline's does: the CCA layers sit inside the decoder blocks, so building RETRO draws
    them between decoder weights; the decoder is therefore drawn alone (as the baseline) under
    the seed and copied in, and only the retrieval parts keep RETRO's own draws. Without this
    a RETRO-vs-baseline gap includes initialisation noise (issue #14)."""
    torch.manual_seed(seed)
    model = Retro(config)
    if config.retrieval:
        torch.manual_seed(seed)
        decoder = Retro(RetroConfig.from_dict({**config.to_dict(), "retrieval": False}))
        missing, unexpected = model.load_state_dict(decoder.state_dict(), strict=False)
        if unexpected or set(missing) - (set(model.state_dict()) - set(model.decoder_parameter_names())):
            raise ValueError("the baseline decoder does not match RETRO's decoder")
    return model


def retrofit_model(baseline: Retro, retro_config: RetroConfig, seed: int) -> Retro:
    """A RETRO model holding a trained baseline's decoder (loaded and verified by the caller:
    `training.verified.load_verified`); only retrieval parts will train."""
    model = seeded_model(retro_config, seed)
    missing, unexpected = model.load_state_dict(baseline.state_dict(), strict=False)
    retrieval_names = set(model.state_dict()) - set(model.decoder_parameter_names())
    if unexpected or set(missing) - retrieval_names:
        raise ValueError("the baseline does not match the RETRO decoder")
    return model
