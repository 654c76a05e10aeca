"""Corpus reading: files -> raw documents -> unique documents with their sources."""

from retro_ops.corpus.documents import CorpusSnapshot, Document, collect_documents
from retro_ops.corpus.readers import (
    SUPPORTED_SUFFIXES,
    RawDocument,
    ReaderConfig,
    ReadIssue,
    ReadReport,
    read_corpus,
    resolve_files,
)

__all__ = [
    "SUPPORTED_SUFFIXES", "CorpusSnapshot", "Document", "RawDocument", "ReadIssue", "ReadReport",
    "ReaderConfig", "collect_documents", "read_corpus", "resolve_files",
]
