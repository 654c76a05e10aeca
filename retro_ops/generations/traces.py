"""Each logged generation as an MLflow trace: request -> model -> retrieved chunks, in MLflow's UI.

The LanceDB log is the system of record; traces are where the ecosystem looks. A trace is built
by the log's writer thread *after* the batch is committed, from the record's own timings
(`start_time_ns` / `end_time_ns`), so the request path never touches MLflow. Its root span
(LLM) carries the sampling params and the output (or their hashes), a RETRIEVER span per
completed chunk carries the neighbour chunk ids, documents and scores (MLflow's document shape),
and the trace is linked to the model: a LoggedModel per served model (`mlflow.modelId`, so the
model's page lists its traces) whose tags name the registry version, and the model's training
run (`mlflow.sourceRun`).

Traces are written by a thread of their own, fed through a bounded queue: a slow MLflow store
never delays the log's commits (the system of record, and its loss bound on SIGKILL); a full
queue drops traces and counts them. The thread is started by the log's (niced) writer thread
and inherits its priority.

MLflow's tracer exports to the process's tracking URI (set once, globally, by MLflow's design):
a process records the traces of one home, into the experiment `retro-ops-generations`.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime

import mlflow
from mlflow.entities import SpanType
from mlflow.exceptions import MlflowException
from mlflow.tracing.constant import TraceMetadataKey

from retro_ops.catalog.mlflow_runs import Tracking
from retro_ops.ids import sha256_hex

log = logging.getLogger(__name__)
EXPERIMENT = "retro-ops-generations"


class TraceRecorder:
    def __init__(self, settings, max_queue: int = 10_000):
        self.tracking = Tracking(settings)
        mlflow.set_tracking_uri(self.tracking.tracking_uri)
        self.experiment_id = self.tracking.experiment_id(EXPERIMENT)
        self._models: dict[str, str] = {}  # model ref -> LoggedModel id
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self.failed = self.dropped = 0

    def submit(self, records, hash_text: bool) -> None:
        """Queue traces for committed records (never blocks; a full queue drops and counts)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="generation-traces", daemon=True)
            self._thread.start()
        for record in records:
            try:
                self._queue.put_nowait((record, hash_text))
            except queue.Full:
                self.dropped += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self.failed += self.record([item[0]], item[1])
            self._queue.task_done()
        self._queue.task_done()

    def flush(self) -> None:
        """Wait until every submitted trace is written and exported."""
        self._queue.join()
        mlflow.flush_trace_async_logging()

    def model_id(self, record) -> str:
        """The LoggedModel standing for a served model in the traces' experiment (one per ref)."""
        if record.model not in self._models:
            name = "retro-ops-" + record.model.replace("/", "-v")
            client = self.tracking.client
            found = client.search_logged_models(experiment_ids=[self.experiment_id],
                                                filter_string=f"name = '{_quoted(name)}'", max_results=1)
            if found:
                self._models[record.model] = found[0].model_id
            else:
                self._models[record.model] = client.create_logged_model(
                    self.experiment_id, name=name, source_run_id=record.mlflow_run_id,
                    tags={"retro_ops.model": record.model,
                          "retro_ops.model_id": str(record.model_id)}).model_id
        return self._models[record.model]

    def record(self, records, hash_text: bool) -> int:
        """Write one trace per record; returns how many failed (logged, never raised)."""
        failed = 0
        for record in records:
            try:
                self._trace(record, hash_text)
            except (MlflowException, OSError, ValueError) as exc:
                failed += 1
                log.warning("no MLflow trace for generation %s: %s", record.request_id, exc)
        return failed

    def _trace(self, r, hash_text: bool) -> None:
        start = int(r.created_at.timestamp() * 1e9)
        total_ns = int((r.retrieval_ms + r.model_ms) * 1e6)
        prompt = {"prompt_sha256": sha256_hex(r.prompt)} if hash_text else {"prompt": r.prompt}
        output = {"output_sha256": sha256_hex(r.output)} if hash_text else {"text": r.output}
        metadata = {TraceMetadataKey.MODEL_ID: self.model_id(r)}
        if r.mlflow_run_id:
            metadata[TraceMetadataKey.SOURCE_RUN] = r.mlflow_run_id
        root = mlflow.start_span_no_context(
            "generate", span_type=SpanType.LLM, inputs={**prompt, **r.params},
            experiment_id=self.experiment_id, start_time_ns=start, metadata=metadata,
            tags={"retro_ops.request_id": r.request_id, "retro_ops.model": r.model,
                  "retro_ops.source": r.source, "retro_ops.retrieval_set": str(r.retrieval_set),
                  "retro_ops.retrieval_set_version": str(r.retrieval_set_version),
                  "retro_ops.deployment_id": str(r.deployment_id)},
            attributes={"retro_ops.request_id": r.request_id, "model": r.model})
        # retrievals happen in the generation; their own durations are not recorded one by one
        share = int(r.retrieval_ms * 1e6 / max(len(r.neighbours), 1))
        for i, use in enumerate(r.neighbours):
            span = mlflow.start_span_no_context(
                f"retrieve chunk {use.chunk}", span_type=SpanType.RETRIEVER, parent_span=root,
                inputs={"chunk": use.chunk, "retrieval_set": r.retrieval_set,
                        "retrieval_set_version": r.retrieval_set_version},
                start_time_ns=start + i * share)
            span.set_attribute("chunk_ids", [str(c) for c in use.chunk_ids])
            span.set_outputs([{"id": str(c), "page_content": "",
                               "metadata": {"chunk_id": str(c), "doc_id": d, "score": s}}
                              for c, d, s in zip(use.chunk_ids, use.doc_ids, use.scores)])
            span.end(end_time_ns=start + (i + 1) * share)
        root.set_outputs({**output, "new_tokens": r.new_tokens})
        root.end(end_time_ns=start + max(total_ns, 1))

    def close(self, timeout: float = 120.0) -> None:
        """Write the queued traces, then flush MLflow's export queue."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        mlflow.flush_trace_async_logging()


def _quoted(name: str) -> str:
    return name.replace("'", "")  # names are built from registry refs; no quote can get in


def delete_traces_before(settings, cutoff: datetime) -> int:
    """Delete the home's generation traces that started before `cutoff`; returns how many."""
    tracking = Tracking(settings)
    return tracking.client.delete_traces(tracking.experiment_id(EXPERIMENT),
                                         max_timestamp_millis=int(cutoff.timestamp() * 1000))
