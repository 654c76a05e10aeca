"""Corpus: files (txt/md/rst/jsonl/parquet) -> raw documents -> unique documents.

Takes a folder, glob or file; gives documents keyed by content hash with all their sources,
and a one-line reason for every input it skipped or repaired. The first stage: imports no other.
"""

from retro_ops.corpus.documents import CorpusSnapshot, Document, collect_documents
from retro_ops.corpus.readers import (
    SUPPORTED_SUFFIXES,
    RawDocument,
    ReaderConfig,
    ReadIssue,
    ReadReport,
    read_corpus,
    resolve_files,
    scan_location,
)

__all__ = [
    "SUPPORTED_SUFFIXES", "CorpusSnapshot", "Document", "RawDocument", "ReadIssue", "ReadReport",
    "ReaderConfig", "collect_documents", "read_corpus", "resolve_files", "scan_location",
]
