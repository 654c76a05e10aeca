"""The project's own catalog (SQLAlchemy 2 + alembic): what exists and which version of it."""

from retro_ops.catalog.model_records import ModelInfo
from retro_ops.catalog.retrieval import RetrievalSetInfo, RetrievalSetVersionInfo
from retro_ops.catalog.store import Catalog, CorpusInfo, CorpusVersionInfo, migrate

__all__ = ["Catalog", "ModelInfo", "CorpusInfo", "CorpusVersionInfo", "RetrievalSetInfo",
           "RetrievalSetVersionInfo", "migrate"]
