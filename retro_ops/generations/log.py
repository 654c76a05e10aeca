"""The generation log's writer: batched, off the request path, flushed on clean shutdown.

`record()` only puts a record on a bounded queue (microseconds; it never blocks a request: a
full queue drops the record and counts it). One writer thread embeds the outputs of a batch
(same embedding space as the chunks, so generations are searchable like chunks), appends the
batch as one LanceDB commit under the table's inter-process lock, then hands the batch to the
MLflow tracer's own thread. A batch is committed when it holds `flush_every` rows or its oldest
row is `flush_seconds` old; `close()` (a clean shutdown) commits what is left. SIGKILL loses exactly
the rows not committed yet; committed versions are whole (LanceDB commits are atomic).

The writer embeds with its own copy of the embedder's tokenizer (the Rust tokenizer refuses
concurrent use from two threads) and shares the model weights (read-only in inference mode).
It runs niced (`GenerationLogConfig.nice`), so on a busy machine its embedding and trace work
waits for the cores rather than slowing the requests it logs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from retro_ops.features.store import FeatureStore
from retro_ops.generations.records import (
    GENERATIONS, GenerationLogConfig, GenerationRecord, generations_schema, to_arrow,
)

log = logging.getLogger(__name__)
_STOP = object()
_RETRIES = 3  # a commit conflict with another process's writer is retried with jitter


@dataclass
class LogStats:
    recorded: int = 0
    written: int = 0
    dropped: int = 0  # queue full: never blocks a request
    failed: int = 0  # rows of batches that could not be committed after retries
    flushes: int = 0
    trace_errors: int = 0
    last_version: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


class GenerationLog:
    """One writer per process; `record` from any thread."""

    def __init__(self, store: FeatureStore, embedder, config: GenerationLogConfig = GenerationLogConfig(),
                 tracer=None):
        self.store, self.config, self.tracer = store, config, tracer
        self.space_id, self.dim = embedder.space.space_id, embedder.dim
        self._embedder = embedder  # its tokenizer is per thread: the writer never shares one
        self.stats = LogStats()
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_queue)
        self._thread = threading.Thread(target=self._run, name="generation-log", daemon=True)
        self._closed = False
        self._thread.start()

    # -- request side -------------------------------------------------------------------------
    def record(self, item: GenerationRecord) -> bool:
        """Queue a record; False (and counted) when the queue is full or the log is closed."""
        if self._closed:
            self.stats.dropped += 1
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats.dropped += 1
            log.error("generation log queue full (%d): request %s not logged",
                      self.config.max_queue, item.request_id)
            return False
        self.stats.recorded += 1
        return True

    def flush(self, timeout: float = 60.0, *, traces: bool = False) -> None:
        """Commit everything recorded before this call (the caller waits; the writer works);
        with `traces`, also wait until their MLflow traces are written."""
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise TimeoutError(f"the generation log did not flush within {timeout} s")
        if traces and self.tracer is not None:
            self.tracer.flush()

    def close(self, timeout: float = 60.0) -> None:
        """Clean shutdown: commit what is queued, then stop the writer and flush the traces."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self.tracer is not None:
            self.tracer.close()

    # -- writer side --------------------------------------------------------------------------
    def _run(self) -> None:
        if self.config.nice and hasattr(os, "setpriority"):  # Linux: a thread is a task of its own
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.config.nice))
        batch: list[GenerationRecord] = []
        deadline = 0.0
        while True:
            wait = None if not batch else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None  # the oldest row is due
            if isinstance(item, GenerationRecord):
                if not batch:
                    deadline = time.monotonic() + self.config.flush_seconds
                batch.append(item)
                if len(batch) < self.config.flush_every and time.monotonic() < deadline:
                    continue
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - a dead writer would drop every later row unseen
                self.stats.failed += len(batch)
                log.exception("generation log: a batch of %d rows failed", len(batch))
            batch = []
            if isinstance(item, threading.Event):
                item.set()
            elif item is _STOP:
                return

    def _write(self, batch: list[GenerationRecord]) -> None:
        if not batch:
            return
        vectors = self._embedder.embed([r.output for r in batch])
        rows = to_arrow(batch, vectors, self.space_id, self.dim, self.config.hash_text)
        for attempt in range(_RETRIES):
            try:
                with self.store.lock(GENERATIONS):
                    table = self.store.table(GENERATIONS, generations_schema(self.dim))
                    table.add(rows)
                    self.stats.last_version = table.version
                break
            except (OSError, RuntimeError, ValueError) as exc:  # lance raises these on conflicts/IO
                if attempt == _RETRIES - 1:
                    self.stats.failed += len(batch)
                    log.error("generation log: %d rows not written after %d tries: %s",
                              len(batch), _RETRIES, exc)
                    return
                time.sleep(0.05 * (attempt + 1) * (1 + np.random.random()))
        self.stats.written += len(batch)
        self.stats.flushes += 1
        if self.tracer is not None:
            self.tracer.submit(batch, self.config.hash_text)
            self.stats.trace_errors = self.tracer.failed + self.tracer.dropped


def open_log(store: FeatureStore, embedder, config: GenerationLogConfig, settings=None
             ) -> GenerationLog | None:
    """The log a process should write (None when opted out), with MLflow traces when enabled
    and `settings` name the home; applies the retention period once at start."""
    if not config.enabled:
        return None
    if config.retention_days is not None:
        from retro_ops.generations.retention import cutoff_days, prune_older_than

        prune_older_than(store, cutoff_days(config.retention_days), settings=settings)
    tracer = None
    if config.traces and settings is not None:
        from retro_ops.generations.traces import TraceRecorder

        tracer = TraceRecorder(settings)
    return GenerationLog(store, embedder, config, tracer)
