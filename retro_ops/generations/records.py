"""What one generation is, and what it leaves behind: its config, its record, the log's schema.

`Generation` is what `serving.generator.Generator` returns; it is defined here, below serving,
so that the log reads a typed result rather than guessing at one it cannot import.

A record names everything needed to trace an answer back: the request id, when, the model (and
its catalog id), the exact retrieval-set version, the deployment row that served it, the
sampling parameters, and for every completed chunk the neighbour chunk ids it read with their
scores. `neighbour_chunk_ids` repeats the distinct ids flat, so "which generations read chunk X"
is one filter on one column. With `hash_text` the prompt and output are stored as sha256 only
(the output's embedding is still stored, so it stays searchable by meaning, never by its words).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from retro_ops.errors import GenerationLogError
from retro_ops.ids import sha256_hex

if TYPE_CHECKING:  # type hints only: the log never needs FAISS or the catalog to build a record
    from retro_ops.catalog import ModelInfo
    from retro_ops.retrieval.retriever import Neighbour, Retriever

GENERATIONS = "generations"  # the LanceDB table
Source = Literal["http", "cli", "pyfunc"]

ENV_PREFIX = "RETRO_OPS_GENERATION_LOG"  # on | off: keep every generation (default on)
HASH_ENV = "RETRO_OPS_GENERATION_LOG_HASH"  # on | off: store sha256 of prompt and output, not their text
FLUSH_EVERY_ENV = "RETRO_OPS_GENERATION_LOG_FLUSH_EVERY"  # rows per committed batch (default 32)
FLUSH_SECONDS_ENV = "RETRO_OPS_GENERATION_LOG_FLUSH_SECONDS"  # commit a batch once its oldest row is this old (2)
TRACES_ENV = "RETRO_OPS_GENERATION_LOG_TRACES"  # on | off: also write each generation as an MLflow trace
RETENTION_ENV = "RETRO_OPS_GENERATION_RETENTION_DAYS"  # delete generations older than this when a writer starts
_ON, _OFF = {"1", "on", "true", "yes"}, {"0", "off", "false", "no"}


@dataclass(frozen=True)
class GenerationLogConfig:
    """How generations are kept.

    enabled: log every generation (on by default; `RETRO_OPS_GENERATION_LOG=off` opts out).
    hash_text: store sha256 of prompt and output instead of their text (privacy).
    flush_every / flush_seconds: a batch is committed (one LanceDB version) when it holds this
        many rows or its oldest row is this old. A SIGKILL loses at most the rows not committed
        yet: at most `flush_every`, or what arrived in `flush_seconds`, when the writer keeps up.
    max_queue: rows waiting for the writer; beyond it a record is dropped and counted, never
        blocking a request (the writer sustains far more rows/s than a server generates).
    traces: also write each generation as an MLflow trace (RETRIEVER span per completed chunk).
    retention_days: generations older than this are deleted (and their text removed from the
        table's files) when a writer starts and by `retro-ops generations prune`; None keeps all.
    nice: the writer thread's niceness increment (Linux, per thread; threads it starts, such as
        MLflow's trace exporters, inherit it): its embedding and trace work yields the cores to
        the requests it logs. 0 leaves it at the server's priority.
    """

    enabled: bool = True
    hash_text: bool = False
    flush_every: int = 32
    flush_seconds: float = 2.0
    max_queue: int = 10_000
    traces: bool = True
    retention_days: float | None = None
    nice: int = 10

    def __post_init__(self) -> None:
        if self.flush_every < 1 or self.flush_seconds <= 0 or self.max_queue < 1 or not 0 <= self.nice <= 19:
            raise GenerationLogError(f"invalid generation-log settings {self}: flush_every >= 1, "
                                     "flush_seconds > 0, max_queue >= 1 and nice 0..19 are required")
        if self.retention_days is not None and self.retention_days <= 0:
            raise GenerationLogError(f"retention_days must be > 0, got {self.retention_days}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GenerationLogConfig:
        """`RETRO_OPS_GENERATION_LOG` (on|off), `..._HASH` (on|off), `..._FLUSH_EVERY`,
        `..._FLUSH_SECONDS`, `..._TRACES` (on|off), `RETRO_OPS_GENERATION_RETENTION_DAYS`."""
        default = cls()
        retention = env.get(RETENTION_ENV, "").strip()
        return cls(
            enabled=_flag(env, ENV_PREFIX, default.enabled),
            hash_text=_flag(env, HASH_ENV, default.hash_text),
            flush_every=int(_number(env, FLUSH_EVERY_ENV, default.flush_every, int)),
            flush_seconds=_number(env, FLUSH_SECONDS_ENV, default.flush_seconds, float),
            traces=_flag(env, TRACES_ENV, default.traces),
            retention_days=_number(env, RETENTION_ENV, None, float) if retention else None,
        )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _ON | _OFF:
        raise GenerationLogError(f"${name}={env[name]!r}: use on or off")
    return value in _ON


def _number(env: Mapping[str, str], name: str, default, kind):
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise GenerationLogError(f"${name}={value!r} is not a {kind.__name__}") from None


@dataclass(frozen=True)
class ChunkRetrieval:
    chunk: int  # index of the completed chunk in the whole text (prompt + generated)
    text: str  # the chunk as the model saw it (decoded tokens)
    neighbours: list[Neighbour]


@dataclass
class Generation:
    """One generated continuation, with what it read: the generator's result."""

    prompt: str
    text: str  # the generated continuation only
    prompt_tokens: int
    new_tokens: int
    retrievals: list[ChunkRetrieval] = field(default_factory=list)
    retrieval_seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass(frozen=True)
class NeighbourUse:
    """The neighbours one completed chunk read (in rank order)."""

    chunk: int  # index of the completed chunk in prompt + output
    chunk_ids: list[int]
    doc_ids: list[str]
    scores: list[float]


@dataclass(frozen=True)
class GenerationRecord:
    request_id: str
    created_at: datetime  # UTC, when the request started
    source: Source
    prompt: str
    output: str
    params: dict  # max_new_tokens, temperature, seed
    model: str  # registry ref (name/version) or model-ID
    model_id: int | None
    retrieval_set: str | None
    retrieval_set_version: int | None
    deployment_id: int | None
    prompt_tokens: int
    new_tokens: int
    retrieval_ms: float
    model_ms: float
    neighbours: list[NeighbourUse] = field(default_factory=list)
    mlflow_run_id: str | None = None  # the model's training run: the trace links to it

    @property
    def neighbour_chunk_ids(self) -> list[int]:
        return sorted({c for use in self.neighbours for c in use.chunk_ids})


def new_request_id() -> str:
    return uuid.uuid4().hex


def record_of(result: Generation, *, source: Source, model_info: ModelInfo, retriever: Retriever | None,
              params: dict, request_id: str | None = None, started: datetime | None = None,
              deployment_id: int | None = None) -> GenerationRecord:
    """The record of a generation; `retriever` is None for a generation without retrieval."""
    version = retriever.version if retriever is not None else None
    return GenerationRecord(
        request_id=request_id or new_request_id(),
        created_at=started or datetime.now(timezone.utc), source=source, prompt=result.prompt,
        output=result.text, params=dict(params), model=model_info.ref, model_id=model_info.id,
        retrieval_set=version.retrieval_set if version else None,
        retrieval_set_version=version.id if version else None, deployment_id=deployment_id,
        prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens,
        retrieval_ms=result.retrieval_seconds * 1000, model_ms=result.model_seconds * 1000,
        neighbours=[NeighbourUse(r.chunk, [n.chunk_id for n in r.neighbours],
                                 [n.doc_id for n in r.neighbours], [n.score for n in r.neighbours])
                    for r in result.retrievals],
        mlflow_run_id=model_info.mlflow_run_id)


_USES = pa.list_(pa.struct([("chunk", pa.int32()), ("chunk_ids", pa.list_(pa.int64())),
                            ("doc_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]))


def generations_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("request_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()), ("text_hashed", pa.bool_()),
        ("prompt", pa.large_string()), ("output", pa.large_string()),
        ("prompt_sha256", pa.string()), ("output_sha256", pa.string()), ("params", pa.string()),
        ("model", pa.string()), ("model_id", pa.int64()), ("retrieval_set", pa.string()),
        ("retrieval_set_version", pa.int64()), ("deployment_id", pa.int64()),
        ("prompt_tokens", pa.int32()), ("new_tokens", pa.int32()),
        ("retrieval_ms", pa.float32()), ("model_ms", pa.float32()),
        ("neighbours", _USES), ("neighbour_chunk_ids", pa.list_(pa.int64())),
        ("embedding_space", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])


#: Every column but the vector: what queries hand back.
def row_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n != "vector"]


def to_arrow(records: list[GenerationRecord], vectors, space_id: str, dim: int,
             hash_text: bool) -> pa.Table:
    """Rows of the log; with `hash_text` the prompt and output columns stay empty."""
    def column(get):
        return [get(r) for r in records]

    return pa.table({
        "request_id": column(lambda r: r.request_id), "created_at": column(lambda r: r.created_at),
        "source": column(lambda r: r.source), "text_hashed": [hash_text] * len(records),
        "prompt": column(lambda r: "" if hash_text else r.prompt),
        "output": column(lambda r: "" if hash_text else r.output),
        "prompt_sha256": column(lambda r: sha256_hex(r.prompt)),
        "output_sha256": column(lambda r: sha256_hex(r.output)),
        "params": column(lambda r: json.dumps(r.params, sort_keys=True)),
        "model": column(lambda r: r.model), "model_id": column(lambda r: r.model_id),
        "retrieval_set": column(lambda r: r.retrieval_set),
        "retrieval_set_version": column(lambda r: r.retrieval_set_version),
        "deployment_id": column(lambda r: r.deployment_id),
        "prompt_tokens": column(lambda r: r.prompt_tokens), "new_tokens": column(lambda r: r.new_tokens),
        "retrieval_ms": column(lambda r: r.retrieval_ms), "model_ms": column(lambda r: r.model_ms),
        "neighbours": column(lambda r: [{"chunk": u.chunk, "chunk_ids": u.chunk_ids,
                                         "doc_ids": u.doc_ids, "scores": u.scores}
                                        for u in r.neighbours]),
        "neighbour_chunk_ids": column(lambda r: r.neighbour_chunk_ids),
        "embedding_space": [space_id] * len(records),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), dim),
    }, schema=generations_schema(dim))
