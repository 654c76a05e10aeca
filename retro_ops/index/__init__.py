"""FAISS indices over retrieval sets: build, publish atomically, load with checks, measure."""

from retro_ops.index.build import BuiltIndex, IndexConfig, build_index, choose_factory
from retro_ops.index.evaluate import IndexQuality, evaluate_index
from retro_ops.index.publish import IndexManifest, PublishedIndex, load_current, publish_index

__all__ = ["BuiltIndex", "IndexConfig", "IndexManifest", "IndexQuality", "PublishedIndex",
           "build_index", "choose_factory", "evaluate_index", "load_current", "publish_index"]
