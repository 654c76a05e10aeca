"""What a server serves: one model with one retrieval set, swapped atomically.

A request reads `holder.current` once and uses only that object, so it finishes on the set it
started with. A swap loads and verifies the new set's index completely (digest, trust, ntotal,
a smoke query) before one reference assignment makes it current; a failed load leaves the old
set serving. Every start and swap is written to the catalog's deployments, naming the token by
a keyed hash. A checkpoint whose weights no longer hash to the catalog's `weights_sha256` is
refused at load: the catalog's lineage would otherwise describe a model that is not the one served.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from retro_ops.catalog import ModelInfo
from retro_ops.errors import ModelIntegrityError
from retro_ops.features.chunking import load_tokenizer
from retro_ops.model import Retro
from retro_ops.retrieval.retriever import Retriever
from retro_ops.serving.admission import AdmissionConfig, ComputeGate
from retro_ops.serving.generation import Generator
from retro_ops.serving.security import token_id, token_key
from retro_ops.training.checkpoint import weights_digest
from retro_ops.training.run import load_model
from retro_ops.training.vocab import Vocabulary
from retro_ops.workspace import Workspace


@dataclass(frozen=True)
class Deployment:
    """An immutable serving state; replaced whole, never mutated."""

    model_info: ModelInfo
    model: Retro
    vocab: Vocabulary
    tokenizer: object
    retriever: Retriever
    since: datetime

    @property
    def retrieval_set(self) -> str:
        return self.retriever.version.retrieval_set

    @property
    def set_version(self) -> int:
        return self.retriever.version.id

    def generator(self) -> Generator:
        return Generator(self.model, self.vocab, self.tokenizer, self.retriever)

    def describe(self) -> dict:
        return {"model": self.model_info.ref, "model_id": self.model_info.id,
                "model_kind": self.model_info.kind, "retrieval_set": self.retrieval_set,
                "retrieval_set_version": self.set_version,
                "retrieval_set_digest": self.retriever.version.digest,
                "index_sha256": self.retriever.manifest.sha256,
                "index_factory": self.retriever.manifest.factory,
                "chunks": self.retriever.version.n_chunks, "since": self.since.isoformat()}


class DeploymentHolder:
    def __init__(self, ws: Workspace, current: Deployment, endpoint: str,
                 admission: AdmissionConfig = AdmissionConfig()):
        self.ws, self.current, self.endpoint = ws, current, endpoint
        self._swap_lock = threading.Lock()  # one swap at a time; readers never wait for it
        # the embedder's Rust tokenizer and torch run one request at a time (2 cores anyway)
        self.gate = ComputeGate(admission)
        self._token_key = token_key(ws.settings.home)
        self._row: int | None = None  # the catalog's deployments row of the current period

    @classmethod
    def start(cls, ws: Workspace, model_ref: str, retrieval_set: str, endpoint: str,
              token: str | None = None, admission: AdmissionConfig = AdmissionConfig()
              ) -> "DeploymentHolder":
        info = ws.catalog.resolve_model(model_ref)
        if not info.config.get("retrieval"):
            raise ValueError(f"model {info.ref} is a {info.kind} without retrieval; serve a "
                             "retro or retrofit model")
        model = verified_model(info)
        retriever = _smoke_test(ws.retriever(retrieval_set), retrieval_set)
        deployment = Deployment(info, model, Vocabulary.load(Path(info.checkpoint_dir)),
                                load_tokenizer(ws.embedder.space.model_path), retriever,
                                datetime.now(timezone.utc))
        holder = cls(ws, deployment, endpoint, admission)
        holder._row = holder._record("start", deployment, token)
        return holder

    def swap(self, retrieval_set: str, token: str | None) -> Deployment:
        """Load and verify, then switch with one assignment. Raises (old set kept) on failure.
        Takes the compute gate ahead of queued requests: it waits for the running one only."""
        with self._swap_lock:
            retriever = self.ws.retriever(retrieval_set)  # digest, trust, ntotal: no compute
            with self.gate.priority():  # the smoke query embeds: the embedder is shared
                _smoke_test(retriever, retrieval_set)
            new = replace(self.current, retriever=retriever, since=datetime.now(timezone.utc))
            self.current = new
            self._row = self._record("swap", new, token, replaces=self._row)
        return new

    def close(self) -> None:
        """The server stops: its current serving period ends now (lineage: who could retrieve what, when)."""
        with self._swap_lock:
            if self._row is not None:
                self.ws.catalog.end_deployment(self._row)
                self._row = None

    def _record(self, action: str, deployment: Deployment, token: str | None,
                replaces: int | None = None) -> int:
        return self.ws.catalog.record_deployment(
            model_id=deployment.model_info.id, retrieval_set_version_id=deployment.set_version,
            action=action, endpoint=self.endpoint, token_id=token_id(token, self._token_key),
            replaces=replaces)


def verified_model(info: ModelInfo) -> Retro:
    """The checkpoint's model, after its weights file hashed to the catalog's weights_sha256."""
    folder = Path(info.checkpoint_dir)
    try:
        actual = weights_digest(folder)
    except OSError as exc:
        raise ModelIntegrityError(f"model {info.ref}: cannot read its weights in {folder}: "
                                  f"{exc.strerror}") from exc
    if actual != info.weights_sha256:
        raise ModelIntegrityError(
            f"model {info.ref}: weights in {folder} hash to {actual[:16]}..., the catalog "
            f"recorded {info.weights_sha256[:16]}...; refusing to serve a checkpoint that is "
            "not the registered one (retrain or restore it)")
    return load_model(info)


def _smoke_test(retriever: Retriever, retrieval_set: str) -> Retriever:
    if retriever.index.ntotal and not retriever.retrieve(["smoke test"], k=1)[0]:
        raise RuntimeError(f"retrieval set {retrieval_set!r} answered no neighbours to a smoke query")
    return retriever
