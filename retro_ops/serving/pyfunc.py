"""RETRO as an MLflow pyfunc, so MLflow-native serving works too; weights stay safetensors.

The registered model is a models-from-code pyfunc (`pyfunc_entry.py`) whose artifact is the
checkpoint folder (safetensors + JSON). The retrieval set is chosen at predict time:
`model.predict(df, params={"retrieval_set": "moby_dick", "max_new_tokens": 32})`. MLflow drops
unknown param names with a warning before predict sees them, so the values of the known ones are
validated here (an unknown set or an out-of-range length is an error, not a silent default).
The retro-ops home that holds the indices and LanceDB comes from `model_config={"home": ...}` (recorded at logging time,
overridable at load) or RETRO_OPS_HOME.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
PARAMS = {"retrieval_set": ("string", ""), "max_new_tokens": ("long", 64),
          "temperature": ("double", 0.8), "seed": ("long", 0)}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string", "text"), ColSpec("string", "retrieval_set"),
                    ColSpec("long", "retrieval_set_version"), ColSpec("string", "neighbours")]),
    params=ParamSchema([ParamSpec(name, kind, default) for name, (kind, default) in PARAMS.items()]),
)


class RetroPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from retro_ops.chunking import load_tokenizer
        from retro_ops.settings import Settings
        from retro_ops.training.checkpoint import load_checkpoint
        from retro_ops.training.vocab import Vocabulary
        from retro_ops.workspace import Workspace

        folder = Path(context.artifacts["checkpoint"])
        config = context.model_config or {}
        home = config.get("home") or os.environ.get("RETRO_OPS_HOME")
        if not home:
            raise ValueError("no retro-ops home: pass model_config={'home': ...} or set RETRO_OPS_HOME")
        self.ws = Workspace.open(Settings(home=Path(home)))
        self.model, self.vocab = load_checkpoint(folder), Vocabulary.load(folder)
        self.tokenizer = load_tokenizer(self.ws.embedder.space.model_path)
        self.default_set = config.get("retrieval_set", "")
        self._retrievers: dict = {}

    def _retriever(self, name: str):
        if name not in self._retrievers:  # verified on first use, then kept
            self._retrievers[name] = self.ws.retriever(name)
        return self._retrievers[name]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from retro_ops.generation import Generator

        params = dict(params or {})
        max_new_tokens = int(params.get("max_new_tokens", 64))
        if not 1 <= max_new_tokens <= 1024:
            raise ValueError(f"max_new_tokens must be between 1 and 1024, got {max_new_tokens}")
        name = params.get("retrieval_set") or self.default_set
        if not name:
            raise ValueError("params['retrieval_set'] is required (no default set was logged)")
        retriever = self._retriever(name)
        generator = Generator(self.model, self.vocab, self.tokenizer, retriever)
        prompts = model_input["prompt"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        rows = []
        for prompt in prompts:
            result = generator.generate(prompt, max_new_tokens=max_new_tokens,
                                        temperature=float(params.get("temperature", 0.8)),
                                        seed=int(params.get("seed", 0)))
            rows.append({"text": result.text, "retrieval_set": name,
                         "retrieval_set_version": retriever.version.id,
                         "neighbours": json.dumps([{"chunk": r.chunk, "chunk_ids": [n.chunk_id for n in r.neighbours]}
                                                   for r in result.retrievals])})
        return pd.DataFrame(rows)


def save_pyfunc(checkpoint: Path, target: Path, home: Path, retrieval_set: str) -> Path:
    """Write the pyfunc model folder (code + checkpoint artifact) to `target`."""
    with warnings.catch_warnings():  # the signature is explicit: no input example needed
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(target), python_model=str(ENTRY), artifacts={"checkpoint": str(checkpoint)},
            signature=SIGNATURE, model_config={"home": str(home), "retrieval_set": retrieval_set},
            pip_requirements=["retro-ops"])
    return target


def log_pyfunc(tracking, run_id: str, checkpoint: Path, home: Path, retrieval_set: str) -> str:
    """Save the pyfunc into a temp folder and log it as the run's `model` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pyfunc(checkpoint, Path(tmp) / "model", home, retrieval_set)
        return tracking.log_artifacts(run_id, folder, "model")
