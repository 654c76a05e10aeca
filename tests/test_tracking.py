"""MLflow lineage on the production backend: the tracking and registry store in Postgres."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from retro_ops.settings import Settings
from retro_ops.catalog.mlflow_runs import DatasetRef, Tracking


@pytest.mark.postgres
def test_runs_inputs_artifacts_and_registry_on_postgres(home: Settings, pg_database_url: str, tmp_path: Path):
    """RETRO_OPS_MLFLOW_URI = a Postgres database: MLflow makes its schema there, and a run with
    dataset inputs, metrics and an artifact, registered with an alias, reads back from a fresh
    client; artifacts stay under the home."""
    settings = replace(home, mlflow_uri=pg_database_url)
    tracking = Tracking(settings)
    run_id = tracking.start_run("train-retro", {"retro_ops.kind": "retro"})
    tracking.log_params(run_id, {"steps": 150})
    tracking.log_metrics(run_id, {"bpb": 1.77}, step=3)
    tracking.log_inputs(run_id, [DatasetRef("corpus:sotu", "a" * 64, "lancedb/documents.lance#version=7",
                                            details={"documents": 29})], "training")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    source = tracking.log_artifacts(run_id, tmp_path / "ckpt", "checkpoint")
    version = tracking.register("retro-ops-retro", source, run_id, "candidate")
    tracking.finish(run_id)

    client = MlflowClient(pg_database_url, registry_uri=pg_database_url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "150"
    assert run.data.metrics["bpb"] == pytest.approx(1.77)
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "corpus:sotu" and dataset.dataset.digest.startswith("aaaa")
    assert str(client.get_model_version_by_alias("retro-ops-retro", "candidate").version) == version
    assert run.info.artifact_uri.startswith(settings.mlflow_dir.as_uri())
    assert [f.path for f in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/config.json"]
