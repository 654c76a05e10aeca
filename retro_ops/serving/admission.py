"""Admission control: one request computes at a time, a bounded few wait, the rest get a fast 503.

The model and the embedder run one request at a time (2 cores; the Rust tokenizer and torch do not
gain from interleaving). Without a bound every request queued behind one lock: 80 slow requests
made `/health` take 11 s and the slowest request 24 s. Here a request is admitted only while fewer
than `1 + max_queue` are in the system, waits at most `queue_timeout_s` for its turn, and admin
work (a swap) jumps the queue so that it waits for the running request only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from retro_ops.errors import ServerOverloadedError


@dataclass(frozen=True)
class AdmissionConfig:
    """How much work the server accepts before it sheds load.

    max_queue: requests waiting behind the running one; one more is answered 503 at once.
        8 keeps the worst queueing delay at ~8 service times (~7 s of 64-token generations here).
    queue_timeout_s: a request that waited this long for its turn gets 503 instead of running late.
    generate_timeout_s: a generation still running after this is stopped (504) and frees its slot.
    retry_after_s: the Retry-After header of a 503: about one service time of the slow endpoint.
    """

    max_queue: int = 8
    queue_timeout_s: float = 15.0
    generate_timeout_s: float = 30.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_queue < 0 or self.queue_timeout_s <= 0 or self.generate_timeout_s <= 0 \
                or self.retry_after_s < 1:
            raise ValueError(f"invalid admission settings {self}: max_queue >= 0, timeouts > 0 "
                             "and retry_after_s >= 1 are required")


class ComputeGate:
    """A lock with a bounded waiting room and a priority lane.

    `admit()` (cheap, non-blocking: call it on the event loop) reserves a place or raises
    ServerOverloadedError; `turn(place)` then waits for the lock in a worker thread. `priority()`
    takes the lock ahead of every ordinary waiter without needing a place.
    """

    def __init__(self, config: AdmissionConfig):
        self.config = config
        self._cond = threading.Condition()
        self._admitted = 0  # running + waiting ordinary requests
        self._busy = False
        self._priority_waiting = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> "Place":
        with self._cond:
            if self._admitted >= 1 + self.config.max_queue:
                raise ServerOverloadedError(
                    f"server busy: {self._admitted} requests running or queued (limit "
                    f"{1 + self.config.max_queue}); retry after {self.config.retry_after_s} s")
            self._admitted += 1
        return Place(self)

    def _leave(self, place: "Place") -> None:
        with self._cond:  # the event loop and a worker thread may both release a place
            if not place.released:
                place.released = True
                self._admitted -= 1

    @contextmanager
    def turn(self, place: "Place") -> Iterator[None]:
        """Hold the lock for an admitted request; gives the place back when done or refused."""
        deadline = time.monotonic() + self.config.queue_timeout_s
        try:
            with self._cond:
                while self._busy or self._priority_waiting:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServerOverloadedError(
                            f"server busy: waited {self.config.queue_timeout_s:g} s for a turn; "
                            f"retry after {self.config.retry_after_s} s")
                    self._cond.wait(left)
                self._busy = True
            try:
                yield
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        finally:
            place.release()

    @contextmanager
    def priority(self) -> Iterator[None]:
        """Hold the lock next, ahead of queued requests: a swap waits for the running one only."""
        with self._cond:
            self._priority_waiting += 1
            try:
                while self._busy:
                    self._cond.wait()
                self._busy = True
            finally:
                self._priority_waiting -= 1
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Place:
    """An admitted request's place in the system; released exactly once."""

    def __init__(self, gate: ComputeGate):
        self._gate, self.released = gate, False

    def release(self) -> None:
        self._gate._leave(self)
