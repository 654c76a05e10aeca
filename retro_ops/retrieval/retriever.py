"""Text in, RETRO neighbours out: embed -> FAISS top-k chunk ids -> neighbour values.

The query is embedded exactly as the database chunks were (same embedder, tokenization,
special tokens and pooling: `Embedder.embed` on text), which public RETRO code is known to get
wrong; a chunk's own text therefore retrieves itself at rank 1 with score ~1.0. Neighbour
values (chunk + continuation, text and token ids) come from the retrieval-set version's members
in one batched LanceDB lookup. Missing results (-1 ids when k > ntotal) never leak out.

Exclusions take effect at once, before any rebuild: every call reads the catalog's active
exclusions (chunk ids, content hashes, documents) and drops matching hits, over-fetching so
that k results still come back; a kept hit whose continuation was excluded since comes back
without it (`continuation_excluded_by`). If that list cannot be read the call raises
`ExclusionListError` rather than answer unfiltered (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retro_ops.catalog import Catalog, RetrievalSetVersionInfo
from retro_ops.catalog.exclusions import ActiveExclusions
from retro_ops.features.embedder import Embedder
from retro_ops.errors import IndexIntegrityError, RetrievalSetError
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.index.build import apply_search_params
from retro_ops.ids import chunk_id, content_hash
from retro_ops.retrieval.index.publish import (
    IndexManifest, check_ntotal, current_build, index_root, load_current,
)

NEIGHBOUR_COLUMNS = ["chunk_id", "doc_id", "position", "content_hash", "text", "token_ids",
                     "continuation_text", "continuation_token_ids"]
_OVERFETCH = 4  # each retry searches this many times deeper, until k survive or the index ends


@dataclass(frozen=True)
class Neighbour:
    rank: int
    score: float
    chunk_id: int
    doc_id: str
    position: int
    text: str
    continuation_text: str
    token_ids: list[int]  # chunk + continuation: the 2m tokens RETRO's encoder reads
    continuation_chunk_id: int | None = None  # None: the chunk ends its document (in the set)
    continuation_excluded_by: int | None = None  # its continuation's exclusion (then left out)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


class Retriever:
    def __init__(self, index: faiss.Index, manifest: IndexManifest, version: RetrievalSetVersionInfo,
                 store: FeatureStore, embedder: Embedder, *,
                 exclusions: Callable[[], ActiveExclusions]):
        if embedder.space.space_id != manifest.embedding_space_id:
            raise RetrievalSetError(
                f"the index of {manifest.retrieval_set!r} was built in embedding space "
                f"{manifest.embedding_space_id}; this embedder is {embedder.space.space_id}")
        self.index, self.manifest, self.version = index, manifest, version
        self.store, self.embedder = store, embedder
        self.exclusions = exclusions  # read per call: raises ExclusionListError when unreadable

    @classmethod
    def open(cls, catalog: Catalog, store: FeatureStore, embedder: Embedder, indices_dir: Path,
             retrieval_set: str, *, search_params: dict[str, int] | None = None) -> Retriever:
        """Load the published index of a retrieval set after every integrity check. A build that
        fails one is refused (fail closed), never swapped for an older build on disk: an older
        build may still hold chunks excluded since. A server that already holds a verified
        index keeps serving it (its swap fails); a fresh start needs `materialize` first."""
        catalog.get_retrieval_set(retrieval_set)  # an unknown (or unsafe) name: 404, not a path
        root = index_root(indices_dir, retrieval_set)
        found = current_build(root)
        if found is None:
            raise IndexIntegrityError(f"retrieval set {retrieval_set!r} has no published index "
                                      f"(run `retro-ops materialize --set {retrieval_set}`)")
        index, manifest = load_current(root, retrieval_set=retrieval_set,
                                       is_trusted=catalog.is_trusted_index)
        version = catalog.retrieval_set_version(manifest.retrieval_set_version_id)
        check_ntotal(root / found[0], manifest, version.n_chunks)
        params = {**manifest.search_params, **(search_params or {})}
        apply_search_params(index, params)
        return cls(index, manifest, version, store, embedder, exclusions=catalog.active_exclusions)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (n, min(k, ntotal)); -1 padding stays in here."""
        k = max(0, min(k, self.index.ntotal))
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def retrieve(self, texts: Sequence[str], k: int = 5) -> list[list[Neighbour]]:
        """Top-k neighbours of each text (an empty or blank text gets none), excluded ones dropped."""
        texts = list(texts)
        wanted = [i for i, t in enumerate(texts) if t.strip()]
        results: list[list[Neighbour]] = [[] for _ in texts]
        if not wanted or k <= 0:
            return results
        excluded = self.exclusions()  # before any search: unreadable -> no answer at all
        vectors = self.embedder.embed([texts[i] for i in wanted])
        depth = k + min(len(excluded), k) if excluded else k
        pending = list(range(len(wanted)))
        while pending:
            scores, ids = self.search(vectors[pending], depth)
            rows = self.store.members(self.version.digest, NEIGHBOUR_COLUMNS,
                                      chunk_ids=sorted({int(i) for i in ids.ravel() if i >= 0}))
            by_id = {row["chunk_id"]: row for row in rows.to_pylist()}
            again = []
            for q, query_scores, query_ids in zip(pending, scores, ids):
                hits = [(float(s), by_id[int(i)]) for s, i in zip(query_scores, query_ids)
                        if i >= 0 and int(i) in by_id]
                kept = [(s, r) for s, r in hits
                        if not excluded.drops(r["chunk_id"], r["content_hash"], r["doc_id"])][:k]
                if len(kept) < k and depth < self.index.ntotal and len(hits) > len(kept):
                    again.append(q)  # some were dropped: search deeper for this query
                results[wanted[q]] = [self._neighbour(rank, score, row, excluded)
                                      for rank, (score, row) in enumerate(kept, 1)]
            pending, depth = again, min(depth * _OVERFETCH, self.index.ntotal)
        return results

    @staticmethod
    def _neighbour(rank: int, score: float, row: dict, excluded: ActiveExclusions) -> Neighbour:
        """A hit's value: chunk + continuation. A continuation excluded after the set version was
        built is left out (the value ends with the chunk, as at a document end), never served."""
        continuation = row["continuation_text"] or ""
        # the set's continuation is the document's next chunk (kept when the set was built)
        following = chunk_id(row["doc_id"], row["position"] + 1) if continuation else None
        covering = (excluded.covering(following, content_hash(continuation), row["doc_id"])
                    if following is not None and excluded else [])
        if covering:
            return Neighbour(rank, score, row["chunk_id"], row["doc_id"], row["position"], row["text"],
                             "", list(row["token_ids"]), following, covering[0])
        return Neighbour(rank, score, row["chunk_id"], row["doc_id"], row["position"], row["text"],
                         continuation,
                         list(row["token_ids"]) + list(row["continuation_token_ids"] or []), following)
