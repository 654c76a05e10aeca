"""Put a model's lineage where users look: its MLflow run (artifact) and Dagster (metadata).

The summary is the backward audit's, flattened to (field, value) rows: the same answer as
`retro-ops lineage model`, written once when the model is materialized.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from retro_ops.catalog import ModelInfo
from retro_ops.catalog.mlflow_runs import Tracking
from retro_ops.lineage.audit import ModelLineage, backward
from retro_ops.lineage.views import AuditDB
from retro_ops.workspace import Workspace

MLFLOW_UI_ENV = "RETRO_OPS_MLFLOW_UI_URL"  # where `mlflow ui` (or a server) shows runs
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """Nested summary -> ("retrieval_set.digest", "...") rows, every value a string."""
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", "" if v is None else str(v)) for k, v in value.items()]
        else:
            rows.append((key, "" if value is None else str(value)))
    return rows


def _mlflow_ui() -> str:
    return os.environ.get(MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI).rstrip("/")


def mlflow_run_url(tracking: Tracking, run_id: str) -> str:
    run = tracking.client.get_run(run_id)
    return f"{_mlflow_ui()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def mlflow_model_version_url(name: str, version: str) -> str:
    """The registered model version's page in the MLflow UI."""
    return f"{_mlflow_ui()}/#/models/{quote(name, safe='')}/versions/{version}"


def publish_lineage(ws: Workspace, info: ModelInfo) -> tuple[ModelLineage, str | None]:
    """Log `lineage/summary.json` and `lineage/documents.csv` to the model's MLflow run;
    returns the lineage and the run's URL (None when the model has no run)."""
    db = AuditDB(ws.catalog, ws.store)
    try:
        lineage = backward(db, f"model-{info.id}")
    finally:
        db.close()
    if not info.mlflow_run_id:
        return lineage, None
    tracking = Tracking(ws.settings)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "summary.json").write_text(json.dumps(lineage.summary, indent=2, default=str))
        lines = ["doc_id,sources,bytes,chunks,role"] + [
            f"{d['doc_id']},\"{d['sources']}\",{d['bytes']},{d['chunks']},{d['role']}"
            for d in lineage.lists["documents"]]
        Path(tmp, "documents.csv").write_text("\n".join(lines) + "\n")
        tracking.log_artifacts(info.mlflow_run_id, Path(tmp), "lineage")
    return lineage, mlflow_run_url(tracking, info.mlflow_run_id)
