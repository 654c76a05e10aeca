"""Admission control: one request computes at a time, a bounded few wait, the rest get a fast 503.

The model and the embedder run one request at a time (2 cores; the Rust tokenizer and torch do not
gain from interleaving). Without a bound every request queued behind one lock: 80 slow requests
made `/health` take 11 s and the slowest request 24 s. Here a request is admitted only while fewer
than `1 + max_queue` are in the system *and* the work ahead of it is at most `max_wait_services`
of its own service times (each endpoint's service time is measured as it runs), waits at most
`queue_timeout_s` for its turn, and admin work (a swap) jumps the queue so that it waits for the
running request only. The wait budget is what keeps accepted latency flat under overload: at 4x
capacity a fixed queue of 8 still made accepted requests wait 8 service times (p99 3.7x the p99
at capacity for /retrieve), while a budget of 2 bounds them at about 3 service times.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from retro_ops.errors import ServerOverloadedError


@dataclass(frozen=True)
class AdmissionConfig:
    """How much work the server accepts before it sheds load.

    max_queue: requests waiting behind the running one; one more is answered 503 at once.
        8 keeps the worst queueing delay at ~8 service times (~7 s of 64-token generations here).
    max_wait_services: a request is admitted only while the work ahead of it (the measured mean
        service time of each request running or waiting, per endpoint) is at most this many of
        its own service times, so an accepted request finishes within about (1 + this) service
        times however hard the server is pushed. None admits by max_queue alone.
    queue_timeout_s: a request that waited this long for its turn gets 503 instead of running late.
    generate_timeout_s: a generation still running after this is stopped (504) and frees its slot.
    retrieve_timeout_s: a /retrieve not answered this long after it arrived (its wait for a turn
        included) gets 504; a query still waiting then is dropped without computing. 10 s is
        hundreds of retrieval service times (tens of ms) and below queue_timeout_s, so a
        retrieval stuck behind slow work answers before a generation's queue wait would.
    retry_after_s: the Retry-After header of a 503: about one service time of the slow endpoint.
    """

    max_queue: int = 8
    max_wait_services: float | None = 2.0
    queue_timeout_s: float = 15.0
    generate_timeout_s: float = 30.0
    retrieve_timeout_s: float = 10.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_queue < 0 or self.queue_timeout_s <= 0 or self.generate_timeout_s <= 0 \
                or self.retrieve_timeout_s <= 0 \
                or self.retry_after_s < 1 or (self.max_wait_services is not None and self.max_wait_services < 0):
            raise ValueError(f"invalid admission settings {self}: max_queue >= 0, timeouts > 0 "
                             "and retry_after_s >= 1 are required")


class ComputeGate:
    """A FIFO lock with a bounded waiting room and a priority lane.

    `admit()` (cheap, non-blocking: call it on the event loop) reserves a place or raises
    ServerOverloadedError; `turn(place)` then waits for the lock in a worker thread. `priority()`
    takes the lock ahead of every ordinary waiter without needing a place. The lock is handed
    to the longest waiter, never raced for: with a notify-all condition an unlucky request lost
    every race until its timeout (p99 of 11 s with 8 queued 0.3 s requests).
    """

    def __init__(self, config: AdmissionConfig):
        self.config = config
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: deque[threading.Event] = deque()
        self._priority: deque[threading.Event] = deque()
        self._in_system: Counter[str] = Counter()  # endpoint -> ordinary requests running or waiting
        self._service_s: dict[str, float] = {}  # endpoint -> moving mean of its service time

    @property
    def admitted(self) -> int:
        with self._lock:  # held only for O(endpoints) work: /health never waits behind compute
            return self._in_system.total()

    def admit(self, endpoint: str = "default", *, force: bool = False) -> "Place":
        """`force`: never refused, for work carried for requests admitted already (a batch of
        their retrieval queries); it still counts as in the system while it waits and runs."""
        with self._lock:
            if force:
                self._in_system[endpoint] += 1
                return Place(self, endpoint)
            admitted = self._in_system.total()
            if admitted >= 1 + self.config.max_queue:
                raise ServerOverloadedError(
                    f"server busy: {admitted} requests running or queued (limit "
                    f"{1 + self.config.max_queue}); retry after {self.config.retry_after_s} s")
            own, budget = self._service_s.get(endpoint), self.config.max_wait_services
            if own is not None and budget is not None:
                ahead = sum(n * self._service_s.get(e, own) for e, n in self._in_system.items())
                if ahead > budget * own:
                    raise ServerOverloadedError(
                        f"server busy: {ahead:.2f} s of work ahead, over {budget:g} x this "
                        f"request's {own:.2f} s; retry after {self.config.retry_after_s} s")
            self._in_system[endpoint] += 1
        return Place(self, endpoint)

    def _leave(self, place: "Place") -> None:
        with self._lock:  # the event loop and a worker thread may both release a place
            if not place.released:
                place.released = True
                self._in_system[place.endpoint] -= 1

    def _observe(self, endpoint: str, seconds: float) -> None:
        with self._lock:  # a moving mean: follows a slower model or a swapped-in larger set
            old = self._service_s.get(endpoint)
            self._service_s[endpoint] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def _acquire(self, lane: deque, timeout: float | None) -> bool:
        with self._lock:
            if not self._busy and not self._priority and (lane is self._priority or not self._waiting):
                self._busy = True
                return True
            ticket = threading.Event()
            lane.append(ticket)
        if ticket.wait(timeout):
            return True
        with self._lock:
            if ticket.is_set():  # handed over just as the wait timed out
                return True
            lane.remove(ticket)
            return False

    def _release(self) -> None:
        with self._lock:  # hand the lock over: it stays busy for the next holder
            lane = self._priority or self._waiting
            if lane:
                lane.popleft().set()
            else:
                self._busy = False

    def _wait_turn(self) -> None:
        if not self._acquire(self._waiting, self.config.queue_timeout_s):
            raise ServerOverloadedError(
                f"server busy: waited {self.config.queue_timeout_s:g} s for a turn; "
                f"retry after {self.config.retry_after_s} s")

    @contextmanager
    def turn(self, place: "Place") -> Iterator["Turn"]:
        """Hold the lock for an admitted request; gives the place back when done or refused.
        The `Turn` it yields can step out of the lock and queue again (`Turn.stepped_out`); the
        service time observed is the time the lock was held."""
        try:
            self._wait_turn()
            turn = Turn(self)
            try:
                yield turn
            finally:
                self._observe(place.endpoint, turn.held_s())
                if turn.holding:
                    self._release()
        finally:
            place.release()

    @contextmanager
    def priority(self) -> Iterator[None]:
        """Hold the lock next, ahead of queued requests: a swap waits for the running one only."""
        self._acquire(self._priority, None)
        try:
            yield
        finally:
            self._release()


class Turn:
    """A request's hold on the gate, which it may leave for a while and queue for again."""

    def __init__(self, gate: ComputeGate):
        self._gate, self.holding = gate, True
        self._since, self._held = time.monotonic(), 0.0

    def held_s(self) -> float:
        return self._held + (time.monotonic() - self._since if self.holding else 0.0)

    @contextmanager
    def stepped_out(self) -> Iterator[None]:
        """Release the lock (to the next waiter) for the body, then queue for it again, last in
        line like a new request (a generation waiting for its batched retrieval lets the other
        admitted requests compute meanwhile). Raises ServerOverloadedError if the new turn does
        not come within the queue timeout; the place stays taken throughout."""
        self._held += time.monotonic() - self._since
        self.holding = False
        self._gate._release()
        yield  # a body that raises leaves the turn without the lock: nothing to give back
        self._gate._wait_turn()
        self.holding, self._since = True, time.monotonic()


class Place:
    """An admitted request's place in the system; released exactly once."""

    def __init__(self, gate: ComputeGate, endpoint: str):
        self._gate, self.endpoint, self.released = gate, endpoint, False

    def release(self) -> None:
        self._gate._leave(self)
