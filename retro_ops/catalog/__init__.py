"""Records: the project's own catalog (SQLAlchemy 2 + alembic) and its MLflow runs.

Every stage writes what it made here (corpus versions, feature versions, retrieval sets, index
builds, models, evaluations, deployments), so this package sits below all stages; it imports
only `corpus` nouns. `mlflow_runs` is the MLflow side (runs, dataset inputs, registry).
"""

from retro_ops.catalog.model_records import ModelInfo
from retro_ops.catalog.retrieval import RetrievalSetInfo, RetrievalSetVersionInfo
from retro_ops.catalog.store import Catalog, CorpusInfo, CorpusVersionInfo, migrate

__all__ = ["Catalog", "ModelInfo", "CorpusInfo", "CorpusVersionInfo", "RetrievalSetInfo",
           "RetrievalSetVersionInfo", "migrate"]
