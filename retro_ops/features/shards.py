"""How a corpus splits into shards: by a hash of the document id, so a document's shard never
changes between runs, machines or Python versions (the builtin `hash` is salted per process).

Every chunk of a document lands in the document's shard, so a shard chunks and embeds alone;
chunk ids depend on (document, position) only, hence the sharded and single-process paths
produce the same chunk ids and, through the same embedder, the same vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SHARDS = 4096


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard (0 <= s < n_shards) of a document: the first 8 bytes of sha256(doc_id) mod n."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count`; its key ("1-of-4") names its Dagster partition and files."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= index < count <= {MAX_SHARDS}")

    @classmethod
    def parse(cls, key: str) -> ShardSpec:
        index, sep, count = key.partition("-of-")
        if not sep or not index.isdigit() or not count.isdigit():
            raise ValueError(f"shard key {key!r}: expected INDEX-of-COUNT, e.g. 0-of-4")
        return cls(int(index), int(count))

    @property
    def key(self) -> str:
        return f"{self.index}-of-{self.count}"

    def holds(self, doc_id: str) -> bool:
        return shard_of(doc_id, self.count) == self.index

    def select(self, doc_ids: Iterable[str]) -> list[str]:
        """The documents of this shard, in the order given."""
        return [d for d in doc_ids if self.holds(d)]


def all_shards(count: int) -> list[ShardSpec]:
    return [ShardSpec(i, count) for i in range(count)]


def threads_per_shard(concurrent: int, cores: int | None = None) -> int:
    """CPU threads one shard's step may use when `concurrent` shards run at once on this
    machine: its cores (those this process may run on) split evenly, at least one. Unbounded,
    each shard's torch would take every core and the shards would only fight over them."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, concurrent))


def limit_threads(threads: int) -> int:
    """Cap torch's intra-op threads in this process (call before loading the embedder: the int8
    encoder takes its thread count from torch when it loads); returns the count torch reports
    after it, so a step records what it ran with, not only what it asked for."""
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()
