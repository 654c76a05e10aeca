"""MLflow lineage through an explicit `MlflowClient` (no fluent API, so no process-global state).

Every training run records params, loss curves and throughput, and as MLflow *dataset inputs*
exactly which data fed it: training corpus version, retrieval-set version (with its LanceDB
versions), index manifest digest, embedding space and tokenizer. The code version and the
Dagster run id go in tags. Checkpoints are logged as artifacts and registered as model versions.
MLflow limits a dataset digest to 36 characters: the short digest goes there, the full one in
the dataset's `profile` JSON. MLflow stores each experiment's artifact location as an absolute
URI (its SQL store resolves relative ones against the cwd), so a copied home gets an experiment
of its own rather than writing artifacts into the folder it was copied from.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from retro_ops.ids import sha256_hex
from retro_ops.durable import file_lock
from retro_ops.settings import Settings

if TYPE_CHECKING:  # mlflow is imported where it is used: loading the code location (every CLI
    from mlflow.entities import DatasetInput  # command, every run) never pays its ~2 s import

EXPERIMENT = "retro-ops"
T = TypeVar("T")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextmanager
def store_lock(db_path: Path | None) -> Iterator[None]:
    """An exclusive lock beside a SQLite MLflow store (none for a server database).

    MLflow creates and migrates a fresh SQLite store without a lock of its own (its tracking and
    registry stores each run `create_all` + alembic): two processes opening a new home at once
    fail with "duplicate column name" or an alembic revision error. Holding this lock while the
    stores are first opened makes one process create the schema and the others find it done.
    """
    if db_path is None:
        yield
        return
    with file_lock(db_path.with_name(db_path.name + ".lock")):
        yield


def get_or_create(get: Callable[[], T | None], create: Callable[[], T]) -> T:
    """`get()`, else `create()`; when another process creates it in between, its copy."""
    from mlflow.exceptions import MlflowException

    found = get()
    if found is not None:
        return found
    try:
        return create()
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        found = get()
        if found is None:
            raise
        return found


@dataclass(frozen=True)
class DatasetRef:
    """One input version as MLflow records it."""

    name: str
    digest: str  # full digest; shortened to 36 characters for MLflow's digest field
    source: str  # where it lives, e.g. a LanceDB table URI with its version
    source_type: str = "local"
    details: dict | None = None

    def to_input(self, context: str) -> DatasetInput:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = json.dumps({"full_digest": self.digest, **(self.details or {})}, sort_keys=True)
        return DatasetInput(Dataset(self.name, self.digest[:36], self.source_type, self.source,
                                    profile=profile),
                            tags=[InputTag("mlflow.data.context", context)])


def code_version(repo: Path | None = None) -> str:
    """git commit of the code (with `-dirty` if modified), else the package version."""
    from retro_ops import __version__

    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return commit[:12] + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"retro-ops-{__version__}"


class Tracking:
    """The MLflow store of a retro-ops home (SQLite + local artifacts by default)."""

    def __init__(self, settings: Settings):
        from mlflow import MlflowClient

        self.tracking_uri = settings.mlflow_tracking_uri
        self.artifact_root = settings.mlflow_artifacts_dir
        with store_lock(sqlite_path(self.tracking_uri)):  # opens (creates, migrates) both stores
            self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            self.client.search_registered_models(max_results=1)  # the registry store opens lazily

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        location = (self.artifact_root / name).as_uri()
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.artifact_location != location:  # the home was moved
            name = f"{name}-{sha256_hex(location)[:8]}"
            location = (self.artifact_root / name).as_uri()

        def get() -> str | None:
            found = self.client.get_experiment_by_name(name)
            return None if found is None else found.experiment_id

        return get_or_create(get, lambda: self.client.create_experiment(name, artifact_location=location))

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_curve(self, run_id: str, name: str, points: list[tuple[int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for start in range(0, len(points), 900):  # the store's batch limit is 1000
            self.client.log_batch(run_id, metrics=[Metric(name, float(v), now, int(s))
                                                   for s, v in points[start:start + 900]])

    def log_inputs(self, run_id: str, datasets: list[DatasetRef], context: str) -> None:
        self.client.log_inputs(run_id, datasets=[d.to_input(context) for d in datasets])

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> str:
        self.client.log_artifacts(run_id, str(folder), artifact_path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def register(self, name: str, source: str, run_id: str, alias: str,
                 tags: dict[str, str] | None = None) -> str:
        """Register `source` as a new version of model `name` and point `alias` at it."""
        get_or_create(lambda: name if self._model_exists(name) else None,
                      lambda: self.client.create_registered_model(name).name)
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def _model_exists(self, name: str) -> bool:
        """A lookup by name, not a filter string: a quote in `name` cannot change the query."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
