"""Catalog records of trained models, the documents they saw, and their evaluations.

A checkpoint folder is recorded relative to the home (`checkpoints/retro-...`) and handed out
absolute, resolved against the home that reads it: a copied home loads its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from retro_ops.catalog import tables as m
from retro_ops.catalog.tables import utcnow
from retro_ops.errors import UnknownModelError


@dataclass(frozen=True)
class ModelInfo:
    id: int
    kind: str
    key: str
    checkpoint_dir: str
    weights_sha256: str
    config: dict
    corpus_version_id: int
    retrieval_set_version_id: int | None
    index_build_id: int | None
    parent_model_id: int | None
    mlflow_run_id: str | None
    mlflow_model_name: str | None
    mlflow_model_version: str | None
    created_at: datetime
    # lineage (0006); None on rows recorded before it
    embedding_space_id: str | None = None
    tokenizer_id: str | None = None
    code_version: str | None = None
    dagster_run_id: str | None = None
    neighbours_key: str | None = None
    vocabulary_digest: str | None = None
    reads_table: str | None = None
    reads_lance_version: int | None = None
    reads_digest: str | None = None
    n_training_chunks: int | None = None
    n_neighbour_chunks: int | None = None
    # split (0009); None on rows recorded before it
    split_seed: int | None = None
    split_heldout_fraction: float | None = None
    split_min_heldout: int | None = None
    # validation part and groups (0011); None on rows recorded before it: no validation, by document
    split_validation_share: float | None = None
    split_group_by: str | None = None
    # checkpoint manifest (0012); None on rows recorded before it (weights_sha256 only)
    checkpoint_sha256: str | None = None
    checkpoint_manifest: dict | None = None

    @property
    def ref(self) -> str:
        if self.mlflow_model_name and self.mlflow_model_version:
            return f"{self.mlflow_model_name}/{self.mlflow_model_version}"
        return f"model-{self.id}"


def _info(row: m.ModelRecord, resolve: Callable[[str], str]) -> ModelInfo:
    return ModelInfo(row.id, row.kind, row.key, resolve(row.checkpoint_dir), row.weights_sha256,
                     dict(row.config), row.corpus_version_id, row.retrieval_set_version_id,
                     row.index_build_id, row.parent_model_id, row.mlflow_run_id,
                     row.mlflow_model_name, row.mlflow_model_version, row.created_at,
                     **{name: getattr(row, name) for name in _LINEAGE_FIELDS})


_LINEAGE_FIELDS = ("embedding_space_id", "tokenizer_id", "code_version", "dagster_run_id",
                   "neighbours_key", "vocabulary_digest", "reads_table", "reads_lance_version",
                   "reads_digest", "n_training_chunks", "n_neighbour_chunks",
                   "split_seed", "split_heldout_fraction", "split_min_heldout",
                   "split_validation_share", "split_group_by",
                   "checkpoint_sha256", "checkpoint_manifest")


class ModelCatalogMixin:
    """Mixed into `Catalog` (which provides `session()`, `stored_path()` and `resolved_path()`)."""

    def _model_info(self, row: m.ModelRecord) -> ModelInfo:
        return _info(row, self.resolved_path)

    def record_model(self, *, training_doc_ids: list[str], checkpoint_dir: str, **fields) -> ModelInfo:
        with self.session() as s:
            row = m.ModelRecord(checkpoint_dir=self.stored_path(checkpoint_dir), **fields)
            s.add(row)
            s.flush()
            s.add_all(m.ModelTrainingDocument(model_id=row.id, doc_id=d) for d in training_doc_ids)
            return self._model_info(row)

    def set_model_registry(self, model_id: int, *, run_id: str, name: str, version: str) -> ModelInfo:
        with self.session() as s:
            row = s.get(m.ModelRecord, model_id)
            row.mlflow_run_id, row.mlflow_model_name, row.mlflow_model_version = run_id, name, version
            return self._model_info(row)

    def set_model_reads(self, model_id: int, *, table: str, lance_version: int, digest: str,
                        n_training_chunks: int, n_neighbour_chunks: int) -> ModelInfo:
        """Point a model at the chunk ids it read (written to LanceDB by `training.reads`)."""
        with self.session() as s:
            row = s.get(m.ModelRecord, model_id)
            row.reads_table, row.reads_lance_version, row.reads_digest = table, lance_version, digest
            row.n_training_chunks, row.n_neighbour_chunks = n_training_chunks, n_neighbour_chunks
            return self._model_info(row)

    def model_by_key(self, key: str) -> ModelInfo | None:
        with self.session() as s:
            row = s.scalar(select(m.ModelRecord).where(m.ModelRecord.key == key)
                           .order_by(m.ModelRecord.id.desc()))
            return self._model_info(row) if row else None

    def resolve_model(self, ref: str) -> ModelInfo:
        """`name/version`, `name@alias` (via `alias_lookup`), `model-ID`, or a kind for the
        newest model of that kind (`retro`, `baseline`, `retrofit`)."""
        with self.session() as s:
            query = select(m.ModelRecord)
            if ref.startswith("model-") and ref[6:].isdigit():
                query = query.where(m.ModelRecord.id == int(ref[6:]))
            elif "/" in ref:
                name, version = ref.rsplit("/", 1)
                query = query.where(m.ModelRecord.mlflow_model_name == name,
                                    m.ModelRecord.mlflow_model_version == version)
            else:
                query = query.where(m.ModelRecord.kind == ref)
            row = s.scalar(query.order_by(m.ModelRecord.id.desc()))
            if row is None:
                known = [self._model_info(r).ref for r in s.scalars(select(m.ModelRecord).order_by(m.ModelRecord.id))]
                raise UnknownModelError(f"no model {ref!r} (known: {', '.join(known) or 'none'}; "
                                        "also: retro, baseline, retrofit for the newest of a kind)")
            return self._model_info(row)

    def list_models(self) -> list[ModelInfo]:
        with self.session() as s:
            return [self._model_info(r) for r in s.scalars(select(m.ModelRecord).order_by(m.ModelRecord.id))]

    def model_training_doc_ids(self, model_id: int) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(m.ModelTrainingDocument.doc_id)
                                  .where(m.ModelTrainingDocument.model_id == model_id)
                                  .order_by(m.ModelTrainingDocument.doc_id)))

    def record_evaluation(self, **fields) -> int:
        with self.session() as s:
            row = m.EvaluationRecord(**fields)
            s.add(row)
            s.flush()
            return row.id

    def record_deployment(self, *, model_id: int, retrieval_set_version_id: int | None, action: str,
                          endpoint: str, token_id: str | None = None, replaces: int | None = None) -> int:
        """A new serving period; `replaces` (the period a swap ends) is closed in the same
        transaction, so no instant has two open rows for one server."""
        with self.session() as s:
            row = m.DeploymentRecord(model_id=model_id, retrieval_set_version_id=retrieval_set_version_id,
                                     action=action, endpoint=endpoint, token_id=token_id)
            s.add(row)
            s.flush()
            if replaces is not None:
                self._close_deployment(s, replaces, row.created_at)
            return row.id

    def end_deployment(self, deployment_id: int) -> None:
        """Close a serving period (the server stopped); closing a closed one keeps its end."""
        with self.session() as s:
            self._close_deployment(s, deployment_id, utcnow())

    def end_deployments(self, deployment_ids: list[int], at: datetime) -> list[int]:
        """Close those of these periods still open at `at` (a server found dead); the ids closed."""
        with self.session() as s:
            rows = list(s.scalars(select(m.DeploymentRecord).where(
                m.DeploymentRecord.id.in_(deployment_ids), m.DeploymentRecord.ended_at.is_(None))))
            for row in rows:
                row.ended_at = at
            return sorted(r.id for r in rows)

    @staticmethod
    def _close_deployment(s, deployment_id: int, at: datetime) -> None:
        old = s.get(m.DeploymentRecord, deployment_id)
        if old is not None and old.ended_at is None:
            old.ended_at = at

    def deployments(self) -> list[dict]:
        with self.session() as s:
            return [{"id": r.id, "model_id": r.model_id, "retrieval_set_version_id": r.retrieval_set_version_id,
                     "action": r.action, "endpoint": r.endpoint, "token_id": r.token_id,
                     "created_at": r.created_at, "ended_at": r.ended_at}
                    for r in s.scalars(select(m.DeploymentRecord).order_by(m.DeploymentRecord.id))]
