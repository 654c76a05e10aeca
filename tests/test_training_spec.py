"""One training spec: `TrainConfig`, `SplitConfig` and `NeighbourConfig` hold every default; the
Dagster resource and the CLI are views that read theirs from them (issue #26 item 3)."""

from __future__ import annotations

import inspect

import pytest

from retro_ops.training.config import NeighbourConfig, TrainConfig
from retro_ops.training.config import SplitConfig


def test_the_resource_and_the_cli_give_the_library_defaults():
    from assets.resources import TrainingResource
    from retro_ops.cli.models import train_command

    resource = TrainingResource()
    spec = resource.spec()
    assert (spec.train, spec.split, spec.neighbours) == (TrainConfig(), SplitConfig(), NeighbourConfig())
    cli = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    shared = set(cli) & set(TrainingResource.model_fields)
    assert {"steps", "batch_size", "k", "seed", "self_neighbours", "no_neighbour_share", "distractor_share"} <= shared
    assert {name: cli[name] for name in shared} == {name: getattr(resource, name) for name in shared}


def test_every_training_knob_of_the_resource_reaches_the_spec():
    from assets.resources import TrainingResource

    changed = TrainingResource(steps=7, batch_size=3, lr=1e-3, k=3, seed=4, heldout_fraction=0.3,
                               validation_share=0.4, group_by="document", self_neighbours=0.2,
                               self_neighbour_shift=5, self_neighbour_noise=0.1, no_neighbour_share=0.15,
                               distractor_share=0.3)
    spec = changed.spec()
    assert spec.train == TrainConfig(steps=7, batch_size=3, lr=1e-3, seed=4, self_neighbours=0.2,
                                     self_neighbour_shift=5, self_neighbour_noise=0.1, no_neighbour_share=0.15,
                                     distractor_share=0.3)
    assert spec.split == SplitConfig(heldout_fraction=0.3, seed=4, validation_share=0.4, group_by="document")
    assert spec.neighbours == NeighbourConfig(k=3)


def test_warmup_is_a_tenth_of_the_run_unless_set():
    assert TrainConfig(steps=300).warmup == 30 and TrainConfig(steps=5).warmup == 1
    assert TrainConfig(steps=300, warmup_steps=7).warmup == 7
    with pytest.raises(ValueError, match="no_neighbour_share is a share of chunks"):
        TrainConfig(no_neighbour_share=1.0)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        TrainConfig(steps=0)
