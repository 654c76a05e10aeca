"""Collapse raw documents into unique documents keyed by content hash.

Exact duplicates (after NFC and newline normalisation) become one `Document` that remembers
every source it was read from, so lineage can still answer "where did this text come from?".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from retro_ops.corpus.readers import RawDocument
from retro_ops.ids import document_id, set_digest


@dataclass
class Document:
    doc_id: str
    text: str
    sources: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)  # from the first source seen


@dataclass(frozen=True)
class CorpusSnapshot:
    """The unique documents of one read of a corpus, and the version digest they define."""

    documents: list[Document]
    digest: str
    duplicates_collapsed: int


def collect_documents(raw_documents: Iterable[RawDocument]) -> CorpusSnapshot:
    by_id: dict[str, Document] = {}
    duplicates = 0
    for raw in raw_documents:
        doc_id = document_id(raw.text)
        existing = by_id.get(doc_id)
        if existing is None:
            by_id[doc_id] = Document(doc_id, raw.text, [raw.source], dict(raw.metadata))
        else:
            duplicates += 1
            if raw.source not in existing.sources:
                existing.sources.append(raw.source)
    return CorpusSnapshot(list(by_id.values()), set_digest(by_id), duplicates)
