"""The Dagster instance under the home, and the dynamic partitions on it: light on purpose.

Only Dagster and the settings are imported here, not the code location (torch, transformers,
LanceDB), so a command that only registers a partition (`retro-ops corpus add`, `retrieval-set
create`) starts in about a second instead of six.
"""

from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef  # the only way to pass config overrides

from assets.partitions import CORPUS_PARTITIONS
from retro_ops.settings import DAGSTER_STORAGE_ENV, Settings

DAGSTER_YAML = """\
# Written by retro-ops from its settings (rewritten when they change; delete this line to keep
# your own edits). Storage: SQLite under this folder, or the Postgres that
# RETRO_OPS_DAGSTER_STORAGE_URL names (runs, event log, schedules).
telemetry:
  enabled: false
"""


def dagster_yaml(settings: Settings) -> str:
    """The instance config; a Postgres URL (which may hold a password) is never written into
    it, only the name of the environment variable that holds it (`dagster dev` reads it there)."""
    if not settings.dagster_storage_url:
        return DAGSTER_YAML
    return DAGSTER_YAML + f"storage:\n  postgres:\n    postgres_url:\n      env: {DAGSTER_STORAGE_ENV}\n"


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The instance under the home, on the storage the settings name (even where the
    environment variable that dagster.yaml references is unset or names another database)."""
    home: Path = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config, wanted = home / "dagster.yaml", dagster_yaml(settings)
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith("# Written by retro-ops") and current != wanted):
        config.write_text(wanted)
    if not settings.dagster_storage_url:
        return dg.DagsterInstance.from_config(str(home))
    overrides = {"storage": {"postgres": {"postgres_url": settings.dagster_storage_url}}}
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=overrides))


def ensure_partition(instance: dg.DagsterInstance, partitions: str, key: str) -> None:
    if not instance.has_dynamic_partition(partitions, key):
        instance.add_dynamic_partitions(partitions, [key])


def ensure_corpus_partition(instance: dg.DagsterInstance, corpus: str) -> None:
    ensure_partition(instance, CORPUS_PARTITIONS, corpus)
