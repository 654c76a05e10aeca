"""Micro-batching: concurrent retrieval queries share one encoder call and one FAISS search.

One request at a time computes (`admission.ComputeGate`), so at 16 clients each query paid a
whole encoder call alone (28 req/s at 1 client, no gain at 16). Here the first waiting query
leads: it waits at most `max_wait_s` for company (the only latency added at one client), queues
for a gate turn, and once it has the turn takes up to `max_batch` queued queries (those that
arrived while it waited for the gate too) and runs them as one batch, which the gate accounts as
one request. Queries that arrive meanwhile queue for the next batch, whose leader is the first of
them, so batches form by themselves under load. A batch is split by (deployment, k): a query is
answered by the deployment it was admitted under, with its own k.

`/retrieve` queries come in unadmitted: their batch is admitted as one unit, and when the gate
refuses it they get its 503. A generation's query for a completed chunk comes from a request
that holds its place already and has stepped out of its turn (`Turn.stepped_out`) to wait here:
it is never refused for admission, and while it waits the other admitted generations compute up
to their own next chunk, so concurrent generations' queries meet in one batch.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from retro_ops.errors import RetrieveTimeoutError, ServerOverloadedError
from retro_ops.serving.admission import ComputeGate


@dataclass(frozen=True)
class BatchConfig:
    """max_batch: most queries per encoder call (64 tokens x 32 is where chunks/s flattens).
    max_wait_s: how long a batch's first query waits for company (at one client: the only
        latency added); with a longer max_gather_s, how long without a new arrival ends the wait.
    max_gather_s: if longer than max_wait_s, it also waits for the /retrieve queries it expects,
        as many as the last batch answered plus those that queued while it ran (clients answered
        together come back together, but over several ms over HTTP: each response is written,
        read and followed by a new request in turn), and never longer than this in all, so a
        client that does not come back cannot hold a batch back. Off by default: at 16 HTTP
        clients 20 ms doubled the queries per encoder call (8.3 -> 15.6) but not req/s
        (docs/results/2026-12-02-batched-serving.md).
    max_pending: queries queued beyond it get 503 at once, as the gate's own waiting room does.
    """

    max_batch: int = 32
    max_wait_s: float = 0.002
    max_gather_s: float = 0.0
    max_pending: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_s < 0 or self.max_gather_s < 0 or self.max_pending < 1:
            raise ValueError(f"invalid batching settings {self}: max_batch >= 1, max_wait_s >= 0, "
                             "max_gather_s >= 0 and max_pending >= 1 are required")


class _Query:
    __slots__ = ("retriever", "text", "k", "admitted", "deadline", "done", "result", "error")

    def __init__(self, retriever, text: str, k: int, admitted: bool, deadline: float | None):
        self.retriever, self.text, self.k, self.admitted = retriever, text, k, admitted
        self.deadline = deadline
        self.done, self.result, self.error = False, None, None


class RetrieveBatcher:
    """Call `retrieve` from many worker threads; each gets exactly its own neighbours."""

    def __init__(self, gate: ComputeGate, config: BatchConfig = BatchConfig()):
        self.gate, self.config = gate, config
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # waiting queries: answered, or no leader now
        self._arrival = threading.Condition(lock)  # the leader gathering company (one waiter)
        self._pending: list[_Query] = []
        self._leading = False
        self._expected = 1  # /retrieve queries the next batch may wait for (see BatchConfig)
        self.batches = 0  # encoder calls made, and the queries they answered (for /health, benches)
        self.queries = 0

    def retrieve(self, retriever, text: str, k: int, *, admitted: bool = False,
                 deadline: float | None = None) -> list:
        """The k neighbours of `text` from `retriever`. `admitted`: the caller's request holds a
        gate place already (and no turn: never call this holding the gate's lock). `deadline`
        (time.monotonic()): a query whose batch gets its turn later is dropped, not computed,
        and raises RetrieveTimeoutError (its client has had its 504 already)."""
        query = _Query(retriever, text, k, admitted, deadline)
        with self._cond:
            if len(self._pending) >= self.config.max_pending:
                raise ServerOverloadedError(
                    f"server busy: {len(self._pending)} retrieve queries queued (limit "
                    f"{self.config.max_pending}); retry after {self.gate.config.retry_after_s} s")
            self._pending.append(query)
            self._arrival.notify()  # wakes only a leader gathering company, not every waiter
            while not query.done and self._leading:
                self._cond.wait()
            lead = not query.done
            if lead:
                self._leading = True
        if lead:
            try:
                while not query.done:  # its own query may sit behind a full batch
                    self._run_batch()
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()  # the next waiting query leads
        if query.error is not None:
            raise query.error
        return query.result

    def _gather(self) -> None:
        """Wait until max_batch queries are in, or the expected ones are and none came for
        max_wait_s, or max_gather_s passed."""
        now = time.monotonic()
        cap = now + max(self.config.max_gather_s, self.config.max_wait_s)
        with self._arrival:
            expected = min(self._expected, self.config.max_batch)
            seen, quiet_until = len(self._pending), now + self.config.max_wait_s
            while len(self._pending) < self.config.max_batch:
                now = time.monotonic()
                if len(self._pending) > seen:  # company came: wait for the next one afresh
                    seen, quiet_until = len(self._pending), now + self.config.max_wait_s
                until = cap if seen < expected else min(quiet_until, cap)
                if until <= now:
                    break
                self._arrival.wait(until - now)

    def _take(self) -> list[_Query]:
        with self._cond:
            batch = self._pending[:self.config.max_batch]
            del self._pending[:self.config.max_batch]
        return batch

    def _finish(self, queries: list[_Query], error: Exception | None = None) -> None:
        with self._cond:
            for query in queries:
                query.error = query.error or error
                query.done = True
            if queries:  # generations' queries are left out: their requests compute a whole
                # chunk before they ask again
                self._expected = max(1, sum(not q.admitted for q in queries) + len(self._pending))
            self._cond.notify_all()

    def _place(self):
        """The batch's gate place; None when the gate refused it and no query in line carries
        an admitted request's place (the unadmitted ones next in line get the refusal)."""
        try:
            return self.gate.admit("retrieve")  # the batch is one unit of work for the gate
        except ServerOverloadedError as error:
            with self._cond:
                ahead = self._pending[:self.config.max_batch]
                refused = [q for q in ahead if not q.admitted]
                self._pending = [q for q in ahead if q.admitted] + self._pending[self.config.max_batch:]
                carried = any(q.admitted for q in self._pending)
            self._finish(refused, error)
        return self.gate.admit("retrieve", force=True) if carried else None

    def _run_batch(self) -> None:
        self._gather()
        place = self._place()
        if place is None:
            return
        batch: list[_Query] = []
        try:
            with self.gate.turn(place):
                batch = self._take()  # after the wait for the gate: whoever queued meanwhile
                now, groups = time.monotonic(), defaultdict(list)
                for query in batch:
                    if query.deadline is not None and query.deadline <= now:
                        query.error = RetrieveTimeoutError("retrieval past its time limit")
                    else:
                        groups[(id(query.retriever), query.k)].append(query)
                for queries in groups.values():
                    self._answer(queries)
                answered = sum(len(queries) for queries in groups.values())
                self.batches, self.queries = self.batches + len(groups), self.queries + answered
        except ServerOverloadedError as error:  # no turn within the queue timeout
            batch = batch or self._take()
            self._finish(batch, error)
        finally:
            self._finish(batch)

    @staticmethod
    def _answer(queries: list[_Query]) -> None:
        try:
            found = queries[0].retriever.retrieve([q.text for q in queries], k=queries[0].k)
        except Exception as error:  # handed to each caller, which raises it as its own
            for query in queries:
                query.error = error
            return
        for query, neighbours in zip(queries, found):
            query.result = neighbours
