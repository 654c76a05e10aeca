"""Package a RETRO checkpoint as an MLflow models-from-code pyfunc and log it to its run.

The packaged code is `retro_ops/serving/pyfunc_entry.py`, named by path (MLflow loads it as a
file at serving time), so training can log the model without importing the serving stage.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

ENTRY = Path(__file__).resolve().parents[1] / "serving" / "pyfunc_entry.py"
PARAMS = {"retrieval_set": ("string", ""), "max_new_tokens": ("long", 64),
          "temperature": ("double", 0.8), "seed": ("long", 0)}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string", "text"), ColSpec("string", "retrieval_set"),
                    ColSpec("long", "retrieval_set_version"), ColSpec("string", "neighbours")]),
    params=ParamSchema([ParamSpec(name, kind, default) for name, (kind, default) in PARAMS.items()]),
)


def save_pyfunc(checkpoint: Path, target: Path, home: Path, retrieval_set: str,
                run_id: str | None = None) -> Path:
    """Write the pyfunc model folder (code + checkpoint artifact) to `target`. `run_id`: the
    MLflow run logging it, whose catalog model the checkpoint is verified against at load."""
    with warnings.catch_warnings():  # the signature is explicit: no input example needed
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(target), python_model=str(ENTRY), artifacts={"checkpoint": str(checkpoint)},
            signature=SIGNATURE, model_config={
                "logged_home": str(home), "retrieval_set": retrieval_set,
                # MLflow lets a load-time model_config override only keys logged here
                "allow_unknown_checkpoint": False, **({"mlflow_run_id": run_id} if run_id else {})},
            pip_requirements=["retro-ops"])
    return target


def log_pyfunc(tracking, run_id: str, checkpoint: Path, home: Path, retrieval_set: str) -> str:
    """Save the pyfunc into a temp folder and log it as the run's `model` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pyfunc(checkpoint, Path(tmp) / "model", home, retrieval_set, run_id)
        return tracking.log_artifacts(run_id, folder, "model")
