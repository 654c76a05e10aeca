"""RETRO as an MLflow pyfunc, so MLflow-native serving works too; weights stay safetensors.

This is the run-time half: `pyfunc_entry.py` (models-from-code) loads `RetroPyfunc`. The
packaging half (signature, params, logging to a run) is `retro_ops.training.pyfunc_package`,
because training logs the model and must not import serving. The retrieval set is chosen at
predict time: `model.predict(df, params={"retrieval_set": "moby_dick", "max_new_tokens": 32})`.
MLflow drops unknown param names with a warning before predict sees them, so the values of the
known ones are validated here (an unknown set or an out-of-range length is an error, not a silent
default). The retro-ops home that holds the indices and LanceDB is, first found:
`model_config={"home": ...}` given at load, RETRO_OPS_HOME, then the home it was logged from
(`logged_home`; models logged before it was named so recorded `home`). A copied home's model thus
reads the copy, not the folder it was copied from; a home that no longer exists is an error,
never silently re-created.

The checkpoint artifact is read once and verified against the home's catalog before it loads
(`training.verified.registered_model`): it must be the model of the MLflow run that logged it
(`mlflow_run_id` in the model config; a file that differs is named), or for pyfuncs logged before
that was recorded, a model whose checkpoint digest it matches. A checkpoint the catalog does not
know is refused (ModelIntegrityError) unless told otherwise explicitly:
`model_config={"allow_unknown_checkpoint": True}` at load (pyfuncs logged since this key was),
or the environment variable RETRO_OPS_PYFUNC_ALLOW_UNKNOWN_CHECKPOINT=1 (any pyfunc, and
`mlflow models serve`, which takes no model_config); it is then served
with a warning and nothing is logged under a model it is not.

Every predicted row is logged to the home's generation log (settings from the environment, as
for the server: `RETRO_OPS_GENERATION_LOG=off` opts out) under the catalog's model whose weights
these are, and the log is flushed at the end of each `predict` call (a call is the pyfunc's
batch; MLflow gives a pyfunc no shutdown hook). The output's `request_id` column names the row.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)
#: 1: the MLflow pyfunc serves a checkpoint the catalog does not know (warned, never logged)
ALLOW_UNKNOWN_ENV = "RETRO_OPS_PYFUNC_ALLOW_UNKNOWN_CHECKPOINT"


class RetroPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from retro_ops.features.chunking import load_tokenizer
        from retro_ops.settings import Settings
        from retro_ops.generations.log import open_log
        from retro_ops.generations.records import GenerationLogConfig
        from retro_ops.workspace import Workspace

        folder = Path(context.artifacts["checkpoint"])
        config = context.model_config or {}
        home = config.get("home") or os.environ.get("RETRO_OPS_HOME") or config.get("logged_home")
        if not home:
            raise ValueError("no retro-ops home: pass model_config={'home': ...} or set RETRO_OPS_HOME")
        if not Path(home).is_dir():
            raise FileNotFoundError(f"retro-ops home {home} does not exist (moved? pass "
                                    "model_config={'home': ...} or set RETRO_OPS_HOME)")
        self.ws = Workspace.open(Settings(home=Path(home)))
        self.model_info, self.model, self.vocab = _verified_checkpoint(self.ws.catalog, folder, config)
        self.tokenizer = load_tokenizer(self.ws.embedder.space.model_path)
        self.default_set = config.get("retrieval_set", "")
        self._retrievers: dict = {}
        self.generation_log = None
        if self.model_info is not None:  # weights the catalog does not know have no lineage to log
            self.generation_log = open_log(self.ws.store, self.ws.embedder,
                                           GenerationLogConfig.from_env(os.environ), self.ws.settings)
            if self.generation_log is not None:  # the traces still queued at exit
                atexit.register(self.generation_log.close)

    def _retriever(self, name: str):
        if name not in self._retrievers:  # verified on first use, then kept
            self._retrievers[name] = self.ws.retriever(name)
        return self._retrievers[name]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from retro_ops.generations.records import record_of
        from retro_ops.serving.generator import Generator

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
        sampling = {"max_new_tokens": max_new_tokens, "temperature": float(params.get("temperature", 0.8)),
                    "seed": int(params.get("seed", 0))}
        for prompt in prompts:
            result = generator.generate(prompt, **sampling)
            row = {"text": result.text, "retrieval_set": name,
                   "retrieval_set_version": retriever.version.id,
                   "neighbours": json.dumps([{"chunk": r.chunk, "chunk_ids": [n.chunk_id for n in r.neighbours]}
                                             for r in result.retrievals])}
            if self.generation_log is not None:
                record = record_of(result, source="pyfunc", model_info=self.model_info,
                                   retriever=retriever, params=sampling)
                self.generation_log.record(record)
                row["request_id"] = record.request_id
            rows.append(row)
        if self.generation_log is not None:
            self.generation_log.flush()
        return pd.DataFrame(rows)


def _verified_checkpoint(catalog, folder: Path, config: dict):
    """(the catalog's model or None, the model, its vocabulary), all from one read of `folder`."""
    from retro_ops.errors import ModelIntegrityError
    from retro_ops.training.checkpoint import read_checkpoint
    from retro_ops.training.verified import registered_model

    files = read_checkpoint(folder)
    try:
        info = registered_model(catalog, files, config.get("mlflow_run_id"))[0]
    except ModelIntegrityError as exc:
        if not (config.get("allow_unknown_checkpoint") or os.environ.get(ALLOW_UNKNOWN_ENV) == "1"):
            raise ModelIntegrityError(f"{exc} (to serve it anyway, without lineage: model_config="
                                      f"{{'allow_unknown_checkpoint': True}} or {ALLOW_UNKNOWN_ENV}=1)") from exc
        log.warning("serving a checkpoint the catalog does not know, as explicitly allowed: %s", exc)
        info = None
    return info, files.model(), files.vocabulary()
