"""Launch materializations through Dagster, on the same instance the UI reads.

The CLI never runs the pipeline around Dagster: it registers corpora as dynamic partitions and
materializes the assets in-process against `$RETRO_OPS_HOME/dagster`, so every CLI run, its
logs, metadata and check results appear in `dagster dev` exactly like a run started there.
`launch_shards` starts the scale-out runs (`assets/sharded.py`), one process per shard.
"""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._record import as_dict, is_record  # metadata records -> plain dicts for --json
from pydantic import PrivateAttr

from assets.cluster import BROKER_ENV, CELERY_LOCATION, check_broker, command_env, materialize_command
from assets.definitions import (
    ALL_ASSETS, DEDUP_ASSETS, FEATURE_ASSETS, MODEL_ASSETS, RETRIEVAL_ASSETS, default_resources,
)
from assets.partitions import CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS, TRAINING_SPEC_PARTITIONS
from assets.resources import ProgressResource, TrainingResource
from assets.sharded import PARALLEL_ENV, SHARD, SHARDS_ENV
from assets.specs import register_spec
from assets.generations import generation_log_observation
from assets.instance import dagster_instance, ensure_partition
from assets.sources import observe_sources
from retro_ops.catalog import Catalog
from retro_ops.features.shards import all_shards
from retro_ops.features.store import FeatureStore
from retro_ops.settings import DAGSTER_STORAGE_ENV, HOME_ENV, Settings

MODELS = TRAINING_SPEC_PARTITIONS  # the model assets: one partition per training spec
WHOLE = "whole"  # the unpartitioned assets that read every corpus (near-duplicates)
#: partitions definition name -> its assets, in graph order
ASSETS_BY_PARTITION = {
    CORPUS_PARTITIONS: [a.key.to_user_string() for a in FEATURE_ASSETS],
    WHOLE: [a.key.to_user_string() for a in DEDUP_ASSETS],
    RETRIEVAL_SET_PARTITIONS: [a.key.to_user_string() for a in RETRIEVAL_ASSETS],
    MODELS: [a.key.to_user_string() for a in MODEL_ASSETS],
}
ASSET_NAMES = [a.key.to_user_string() for a in ALL_ASSETS]
#: the job name `dg.materialize` gives its runs (the UI lists CLI runs under it)
EPHEMERAL_JOB = "__ephemeral_asset_job__"
#: step event -> what `on_step` is told
STEP_STATES = {"STEP_START": "started", "STEP_SUCCESS": "done", "STEP_FAILURE": "failed"}
#: on_step(partition key, step key, "started" | "done" | "failed")
StepListener = Callable[[str, str, str], None]
@dataclass
class AssetOutcome:
    asset: str
    metadata: dict = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass
class RunOutcome:
    partition: str
    run_id: str
    success: bool
    assets: list[AssetOutcome]
    error: str | None = None


def _plain(value):
    """A metadata value as plain JSON: a table as its rows (dicts), a schema, a lineage or any other
    Dagster record as a dict of its fields, an asset key as "a/b", a URL, path or markdown as
    its text; what is left over (a type added later) as its text, never an object json rejects."""
    if isinstance(value, dg.TableMetadataValue):
        return [_plain(dict(row.data)) for row in value.records]
    if isinstance(value, dg.AssetKey):
        return value.to_user_string()
    if isinstance(value, dg.MetadataValue) and value.value is not value:
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if is_record(value):  # before tuples: Dagster's records are tuples that refuse iteration
        return _plain(as_dict(value))
    if hasattr(value, "_asdict"):  # NamedTuple-based records
        return _plain(value._asdict())
    if hasattr(value, "model_dump"):  # pydantic-based ones (code references)
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def materialize_partition(
    instance: dg.DagsterInstance, partitions: str, key: str, *, selection: list[str] | None = None,
    progress: ProgressResource | None = None, log_level: str = "ERROR",
    asset_config: dict[str, dict] | None = None, training: TrainingResource | None = None,
    on_step: StepListener | None = None, launched_by: str = "cli",
) -> RunOutcome:
    """Materialize the selected assets (default: all) of one partition: a corpus, a retrieval
    set, or (partitions=MODELS) the training spec `training`, recorded under its name (`key`
    names it; "models" or "" = its content-derived name). The sources are observed first, so
    the graph shows the data versions the run read. `on_step` hears each step start and end as
    it happens (the CLI prints them). `launched_by` tags the run (`retro_ops/launched_by`):
    "cli", or "cli-worker" where a local worker served the command."""
    names = ASSETS_BY_PARTITION[partitions]
    unknown = sorted(set(selection or []) - set(names))
    if unknown:
        raise ValueError(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if partitions == MODELS:
        key = register_spec(instance, training or TrainingResource(), None if key in ("", "models") else key)
    elif partitions != WHOLE:
        ensure_partition(instance, partitions, key)
    settings = Settings.from_env()
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    try:
        observe_sources(instance, catalog)
        instance.report_runless_asset_event(generation_log_observation(FeatureStore(settings.lancedb_uri)))
    finally:
        catalog.close()
    resources = default_resources()
    if progress is not None:  # as is: Dagster would rebuild a ConfigurableResource from its fields
        resources["progress"] = dg.ResourceDefinition.hardcoded_resource(progress)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if asset_config:
        run_config["ops"] = {name: {"config": cfg} for name, cfg in asset_config.items()}
    result = _execute(instance, selection or names, resources, run_config,
                      None if partitions == WHOLE else key, on_step, launched_by)
    outcomes: dict[str, AssetOutcome] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        outcomes[name] = AssetOutcome(name, {k: _plain(v) for k, v in mat.metadata.items()})
    for evaluation in result.get_asset_check_evaluations():
        name = evaluation.asset_key.to_user_string()
        outcomes.setdefault(name, AssetOutcome(name)).checks[evaluation.check_name] = evaluation.passed
    error = None
    if not result.success:
        failures = result.get_step_failure_events()
        error = "; ".join(f"{f.step_key}: {f.step_failure_data.error.message.strip()}"
                          for f in failures if f.step_failure_data.error) or "run failed"
    return RunOutcome(key, result.run_id, result.success,
                      [outcomes[n] for n in names if n in outcomes], error)


def _execute(instance: dg.DagsterInstance, selection: list[str], resources: dict, run_config: dict,
             partition_key: str | None, on_step: StepListener | None,
             launched_by: str = "cli") -> dg.ExecuteInProcessResult:
    """What `dg.materialize` does, with the run id chosen first so a listener can follow the
    run's step events as they are stored (materialize offers no such hook)."""
    job = dg.Definitions(jobs=[dg.define_asset_job(EPHEMERAL_JOB, selection=selection)],
                         assets=ALL_ASSETS, resources=resources).resolve_job_def(EPHEMERAL_JOB)
    run_id = str(uuid.uuid4())
    if on_step is not None:
        def listen(entry) -> None:
            event = entry.dagster_event
            state = STEP_STATES.get(event.event_type_value) if event is not None else None
            if state is not None:
                on_step(partition_key or "", event.step_key or "", state)

        instance.add_event_listener(run_id, listen)
    return job.execute_in_process(run_config=run_config, instance=instance, partition_key=partition_key,
                                  raise_on_error=False, run_id=run_id,
                                  tags={"retro_ops/launched_by": launched_by})


def materialize_corpus(instance: dg.DagsterInstance, corpus: str, **kwargs) -> RunOutcome:
    return materialize_partition(instance, CORPUS_PARTITIONS, corpus, **kwargs)


def materialize_retrieval_set(instance: dg.DagsterInstance, name: str, **kwargs) -> RunOutcome:
    return materialize_partition(instance, RETRIEVAL_SET_PARTITIONS, name, **kwargs)


def materialize_models(instance: dg.DagsterInstance, training: TrainingResource, name: str = "",
                       **kwargs) -> RunOutcome:
    """Train (or reuse) the models of one training spec, in its own partition."""
    return materialize_partition(instance, MODELS, name, training=training, **kwargs)


class ReportedProgress(ProgressResource):
    """Progress told to a reporter outside Dagster (the CLI draws bars in a terminal and prints
    plain lines elsewhere): `reporter.tracker(partition, asset, label)` returns the callback
    `(done, total)` each tracked step calls. Without a reporter: the run's log, as the base."""

    _reporter: object = PrivateAttr(default=None)

    def attach(self, reporter) -> "ReportedProgress":
        self._reporter = reporter
        return self

    def tracker(self, context: dg.AssetExecutionContext, label: str):
        if self._reporter is None:
            return super().tracker(context, label)
        partition = context.partition_key if context.has_partition_key else ""
        return self._reporter.tracker(partition, context.asset_key.to_user_string(), label)


FEATURES_JOB = "sharded_features"  # chunk and embed each shard of a corpus
INDEX_JOB = "sharded_index_fill"  # fill each shard of a retrieval set's trained index
#: what each scale-out step materializes per shard
SHARD_SELECTIONS = {FEATURES_JOB: "chunk_shard,embedding_shard", INDEX_JOB: "index_shard"}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ShardRun:
    partition: str
    run_id: str
    success: bool
    wall_s: float  # its process, start to exit (what Dagster adds shows against library seconds)
    output: str  # the tail of the run's console output, for a failure message


#: where `dagster asset materialize` loads the code location from: this package's definitions
#: (in-process executor, `assets.definitions.local_executor`), or the Celery one
#: (`CELERY_LOCATION`, from `assets.cluster`)
LOCAL_LOCATION = ("-m", "assets.definitions")


def launch_shards(settings: Settings, job: str, key: str, n_shards: int, *, parallel: int | None = None,
                  location: tuple[str, ...] = LOCAL_LOCATION, run_config: dict | None = None) -> list[ShardRun]:
    """One Dagster run per shard of `key` (a corpus for FEATURES_JOB, a retrieval set for
    INDEX_JOB), `parallel` at once (default: all): each is `dagster asset materialize` in its own
    process on the home's instance, its steps under the location's executor (in-process, or
    Celery workers); what a backfill launched from the UI does, without needing the daemon.
    (In-process runs on threads are no substitute: Dagster's log set-up is not thread-safe and
    deadlocks.) `run_config` goes to every run (e.g. `embedding_shard`'s `torch_threads`)."""
    dimension = CORPUS_PARTITIONS if job == FEATURES_JOB else RETRIEVAL_SET_PARTITIONS
    env = {SHARDS_ENV: str(n_shards), PARALLEL_ENV: str(min(parallel or n_shards, n_shards))}
    partitions = [str(dg.MultiPartitionKey({dimension: key, SHARD: shard.key})) for shard in all_shards(n_shards)]
    return launch_runs(settings, SHARD_SELECTIONS[job], partitions, parallel=parallel, location=location,
                       run_config=run_config, env=env)


def launch_runs(settings: Settings, select: str, partitions: list[str], *, parallel: int | None = None,
                location: tuple[str, ...] = LOCAL_LOCATION, run_config: dict | None = None,
                env: dict[str, str] | None = None) -> list[ShardRun]:
    """`dagster asset materialize --select SELECT --partition P` for each partition, `parallel`
    at once, each in its own process on the home's instance. On the Celery location the broker
    is checked first: one line naming it (BrokerUnavailableError) if it does not answer."""
    if location == CELERY_LOCATION:
        check_broker(os.environ.get(BROKER_ENV, ""))
    env = command_env({**os.environ, "DAGSTER_HOME": str(settings.dagster_home), HOME_ENV: str(settings.home),
                       **(env or {})})
    if settings.dagster_storage_url:  # the dagster.yaml retro-ops writes names this variable
        env[DAGSTER_STORAGE_ENV] = settings.dagster_storage_url

    def run(partition: str) -> tuple[str, float, subprocess.CompletedProcess]:
        started = time.perf_counter()
        command = materialize_command(select, partition, run_config, location=location)
        done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=env, capture_output=True, text=True)
        return partition, time.perf_counter() - started, done

    with ThreadPoolExecutor(max_workers=parallel or len(partitions)) as pool:  # threads only wait here
        finished = list(pool.map(run, partitions))
    with dagster_instance(settings) as instance:
        runs = []
        for partition, wall_s, done in finished:
            found = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition}), limit=1)
            run_id = found[0].run_id if found else ""
            success = done.returncode == 0 and bool(found) and found[0].is_success
            runs.append(ShardRun(partition, run_id, success, wall_s, (done.stdout + done.stderr)[-2000:]))
        return runs
