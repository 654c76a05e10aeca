"""Everything training and evaluation read, resolved to exact versions and computed once.

`prepare_training` pins the training corpus version, splits its documents into train and
held-out by a seeded hash, loads their chunks, fixes the output vocabulary, and computes (or
loads from the content-addressed cache) the neighbours of every train and held-out chunk from
the named retrieval set's verified index, excluding chunks of the same document. Training
neighbours also exclude every held-out document and every document of the set that
near-duplicates one (MinHash LSH, `governance.dedup`): otherwise RETRO reads evaluation text in
training that its baseline never sees (issue #14).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa

from retro_ops.catalog import CorpusVersionInfo
from retro_ops.features.schemas import CHUNKS, CHUNKS_SCHEMA
from retro_ops.governance.dedup import DedupConfig, near_duplicates_of
from retro_ops.ids import set_digest, sha256_hex
from retro_ops.model import RetroConfig
from retro_ops.retrieval.retriever import Retriever
from retro_ops.training.data import (
    ChunkTable, DocumentSplit, SplitConfig, group_key, load_chunk_table, split_documents, without_excluded,
)
from retro_ops.training.neighbours import (
    NeighbourConfig, Neighbours, cached_neighbours, compute_neighbours, neighbours_key,
)
from retro_ops.training.trainer import TrainConfig
from retro_ops.training.vocab import Vocabulary
from retro_ops.workspace import Workspace


def demo_model_config() -> RetroConfig:
    """Sized to train in about two minutes per model on 2 CPU cores (see README)."""
    return RetroConfig.demo(seq_len=256, d_model=128, n_layer=4, n_head=4, d_ff=512,
                            enc_d_model=128, enc_n_layer=2, enc_n_head=4, enc_d_ff=512,
                            cca_start_layer=3)


@dataclass(frozen=True)
class TrainingSpec:
    """What to train on and how; its hash (with the input versions) keys every artefact."""

    corpus: str
    retrieval_set: str
    model: RetroConfig = field(default_factory=demo_model_config)
    train: TrainConfig = TrainConfig()
    neighbours: NeighbourConfig = NeighbourConfig()
    split: SplitConfig = SplitConfig()
    dedup: DedupConfig = DedupConfig()  # which set documents count as copies of held-out ones

    def as_dict(self) -> dict:
        return {"corpus": self.corpus, "retrieval_set": self.retrieval_set,
                "model": self.model.to_dict(), "train": asdict(self.train),
                "neighbours": asdict(self.neighbours), "split": asdict(self.split),
                "dedup": asdict(self.dedup)}


@dataclass(frozen=True)
class NeighbourSet:
    neighbours: Neighbours
    key: str
    computed_now: bool
    retrieval_set: str
    set_version_id: int
    set_digest: str
    index_sha256: str


@dataclass(frozen=True)
class PreparedData:
    spec: TrainingSpec
    corpus_version: CorpusVersionInfo
    train_doc_ids: list[str]
    heldout_doc_ids: list[str]  # validation and test
    vocab: Vocabulary
    train_table: ChunkTable
    heldout_table: ChunkTable
    train_neighbours: NeighbourSet
    heldout_neighbours: NeighbourSet
    retriever: Retriever
    forbidden_doc_ids: frozenset[str] = frozenset()  # never a training neighbour
    split: DocumentSplit | None = None


def store_vocabulary(ws: Workspace) -> Vocabulary:
    column = ws.store.table(CHUNKS, CHUNKS_SCHEMA).search().select(["token_ids"]).limit(None).to_arrow()
    return Vocabulary.from_ids(np.unique(column.column("token_ids").combine_chunks().flatten().to_numpy()))


def encode_table(table: ChunkTable, vocab: Vocabulary) -> ChunkTable:
    return replace(table, tokens=vocab.encode(table.tokens))


def encode_neighbours(neighbours: Neighbours, vocab: Vocabulary) -> Neighbours:
    """Neighbour tokens in a model's vocabulary, as its embedding table indexes them."""
    return replace(neighbours, tokens=vocab.encode(neighbours.tokens))


def neighbours_for(ws: Workspace, table: ChunkTable, retriever: Retriever, config: NeighbourConfig,
                   m: int, forbidden_docs: frozenset[str] = frozenset()) -> NeighbourSet:
    """Neighbours of every chunk of `table` in the retriever's set (cached by content key),
    never from a document in `forbidden_docs` (nor, as always, from the chunk's own)."""
    version, sha = retriever.version, retriever.manifest.sha256
    excluded = retriever.exclusions()  # in force now; unreadable -> ExclusionListError
    if forbidden_docs:  # part of the exclusions, so part of the cache key
        excluded = replace(excluded, doc_ids=excluded.doc_ids | frozenset(forbidden_docs))
    key = neighbours_key(table, version, sha, config, m, excluded)

    def compute():
        vectors = ws.store.vectors_of(version.embedding_space_id, retriever.manifest.dim,
                                      pa.array(list(table.content_hashes), pa.string()))
        neighbours = compute_neighbours(retriever.index, ws.store, version, table, vectors, config, m,
                                        excluded)
        return neighbours, {"retrieval_set": version.retrieval_set, "set_version_id": version.id,
                            "set_digest": version.digest, "index_sha256": sha, "chunks": len(table),
                            **asdict(config)}

    neighbours, computed = cached_neighbours(ws.settings.neighbours_dir, key, compute)
    return NeighbourSet(neighbours, key, computed, version.retrieval_set, version.id,
                        version.digest, sha)


def set_doc_ids(ws: Workspace, retriever: Retriever) -> list[str]:
    """The documents whose chunks are members of the retriever's set version."""
    rows = ws.store.members(retriever.version.digest, ["doc_id"])
    return sorted(set(rows.column("doc_id").to_pylist()))


def document_groups(ws: Workspace, doc_ids: list[str], split: SplitConfig) -> dict[str, str]:
    """doc id -> group key under the split's `group_by` (from the catalog's recorded sources)."""
    if split.group_by == "document":
        return {d: d for d in doc_ids}
    sources = ws.catalog.documents_sources(doc_ids)
    return {d: group_key(d, sources.get(d, []), split.group_by) for d in doc_ids}


def corpus_split(ws: Workspace, version: CorpusVersionInfo, split: SplitConfig) -> DocumentSplit:
    doc_ids = ws.catalog.corpus_doc_ids(version.id)
    return split_documents(doc_ids, split, document_groups(ws, doc_ids, split))


def forbidden_neighbour_docs(ws: Workspace, retriever: Retriever, heldout_ids: list[str],
                             dedup: DedupConfig, split: SplitConfig = SplitConfig()) -> frozenset[str]:
    """Held-out documents, the set's documents that near-duplicate one of them, and (grouped
    splits) the set's documents of a held-out group, such as another edition of the chapter."""
    candidates = set_doc_ids(ws, retriever)
    texts = ws.store.document_texts(sorted(set(candidates) | set(heldout_ids)))
    near = near_duplicates_of({d: texts[d] for d in heldout_ids if d in texts},
                              {d: texts[d] for d in candidates if d in texts}, dedup)
    grouped: set[str] = set()
    if split.group_by != "document":  # one lookup of sources for both sides
        groups = document_groups(ws, sorted(set(heldout_ids) | set(candidates)), split)
        held_groups = {groups[d] for d in heldout_ids}
        grouped = {d for d in candidates if groups[d] in held_groups}
    return frozenset(heldout_ids) | frozenset(near) | frozenset(grouped)


def prepare_training(ws: Workspace, spec: TrainingSpec) -> PreparedData:
    version = ws.catalog.latest_corpus_version(spec.corpus)
    split = corpus_split(ws, version, spec.split)
    train_ids, heldout_ids = split.train, split.heldout
    m = spec.model.chunk_size
    train_table = without_excluded(load_chunk_table(ws.store, train_ids, m), ws.catalog.active_exclusions())
    heldout_table = load_chunk_table(ws.store, heldout_ids, m)
    retriever = ws.retriever(spec.retrieval_set)
    forbidden = forbidden_neighbour_docs(ws, retriever, heldout_ids, spec.dedup, spec.split)
    return PreparedData(
        spec, version, train_ids, heldout_ids, store_vocabulary(ws), train_table, heldout_table,
        neighbours_for(ws, train_table, retriever, spec.neighbours, m, forbidden),
        neighbours_for(ws, heldout_table, retriever, spec.neighbours, m), retriever, forbidden, split)


def model_key(kind: str, data: PreparedData, parent_sha: str | None, tokenizer_id: str) -> str:
    """Hash of everything that determines a checkpoint: config and exact input versions."""
    return sha256_hex(json.dumps({
        "kind": kind, "spec": data.spec.as_dict(), "corpus_digest": data.corpus_version.digest,
        "train_docs": set_digest(data.train_doc_ids), "vocab": data.vocab.digest,
        "neighbours": data.train_neighbours.key if kind != "baseline" else None,
        "parent": parent_sha, "tokenizer": tokenizer_id,
        **({"excluded_text": data.train_table.dropped} if data.train_table.dropped else {}),
        "init": "shared-decoder",  # RETRO's decoder starts as its baseline's (trainer.seeded_model)
    }, sort_keys=True))
