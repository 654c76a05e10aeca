"""Training specs by name: each spec is one partition of the model assets, so two models
trained from two specs stand side by side in the UI instead of one replacing the other.

A spec is the `TrainingResource`'s fields, saved as `<home>/training_specs/<name>.json` when it
is first launched; its default name is readable and content-derived (`<corpus>-<digest>`), so
the same spec always lands in the same partition. A run of a partition reads its spec from
that file, whoever launched it (the CLI, the UI's Materialize button, automation).
"""

import json
from pathlib import Path

import dagster as dg

from assets.partitions import TRAINING_SPEC_PARTITIONS
from assets.resources import TrainingResource
from retro_ops.durable import write_atomic
from retro_ops.ids import sha256_hex, validate_name
from retro_ops.settings import Settings

SPECS_DIR = "training_specs"


def _fields(training: TrainingResource) -> dict:
    return training.model_dump()


def spec_name(training: TrainingResource) -> str:
    digest = sha256_hex(json.dumps(_fields(training), sort_keys=True))[:8]
    return f"{training.corpus[:40]}-{digest}"


def spec_path(settings: Settings, name: str) -> Path:
    return settings.home / SPECS_DIR / f"{validate_name(name, 'training spec')}.json"


def save_spec(settings: Settings, training: TrainingResource, name: str | None = None) -> str:
    """Record the spec under `name` (default: its content-derived name) and return the name; a
    name already holding another spec is refused (a spec never changes under its name)."""
    name = name or spec_name(training)
    path = spec_path(settings, name)
    data = json.dumps(_fields(training), sort_keys=True, indent=1).encode()
    if path.exists():
        if json.loads(path.read_bytes()) != json.loads(data):
            raise ValueError(f"training spec {name!r} already exists with other settings ({path})")
        return name
    write_atomic(path, data)
    return name


def load_spec(settings: Settings, name: str) -> TrainingResource:
    path = spec_path(settings, name)
    if not path.exists():
        raise dg.Failure(f"no training spec {name!r} ({path} missing): `retro-ops train` or "
                         "`retro-ops demo` records one when it launches it")
    return TrainingResource(**json.loads(path.read_text()))


def register_spec(instance: dg.DagsterInstance, training: TrainingResource, name: str | None = None) -> str:
    """Save the spec and add its partition; returns the partition key."""
    name = save_spec(Settings.from_env(), training, name)
    if not instance.has_dynamic_partition(TRAINING_SPEC_PARTITIONS, name):
        instance.add_dynamic_partitions(TRAINING_SPEC_PARTITIONS, [name])
    return name


def spec_of(context: dg.AssetExecutionContext) -> TrainingResource:
    """The spec of the run's partition."""
    return load_spec(Settings.from_env(), context.partition_key)
