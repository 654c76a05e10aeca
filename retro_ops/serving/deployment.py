"""What a server serves: one model with one retrieval set, swapped atomically.

A request reads `holder.current` once and uses only that object, so it finishes on the set it
started with. A swap loads and verifies the new set's index completely (digest, trust, ntotal,
a smoke query) before one reference assignment makes it current; a failed load leaves the old
set serving. Every start and swap is written to the catalog's deployments, naming the token by
a keyed hash. A checkpoint any of whose files (weights, config, vocabulary) no longer hashes to
the catalog's manifest is refused at load (`training.verified`): the catalog's lineage would
otherwise describe a model that is not the one served.

A server killed with SIGKILL runs no shutdown code, so its current row would stay open (ended_at
NULL) for ever. Each holder therefore keeps a lease (`ServingLease`) naming the rows it opened,
and a starting server closes the open rows of every lease no live process holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from retro_ops.catalog import ModelInfo
from retro_ops.features.chunking import load_tokenizer
from retro_ops.model import Retro
from retro_ops.retrieval.retriever import Retriever
from retro_ops.serving.admission import AdmissionConfig, ComputeGate
from retro_ops.serving.generator import Fetch, Generator
from retro_ops.serving.security import token_id, token_key
from retro_ops.training.verified import load_verified
from retro_ops.training.vocab import Vocabulary
from retro_ops.workspace import Workspace

log = logging.getLogger(__name__)
LEASE_DIR = ("serving", "leases")  # under the home


@dataclass(frozen=True)
class Deployment:
    """An immutable serving state; replaced whole, never mutated."""

    model_info: ModelInfo
    model: Retro
    vocab: Vocabulary
    tokenizer: object
    retriever: Retriever
    since: datetime

    @property
    def retrieval_set(self) -> str:
        return self.retriever.version.retrieval_set

    @property
    def set_version(self) -> int:
        return self.retriever.version.id

    def generator(self, fetch: Fetch | None = None) -> Generator:
        return Generator(self.model, self.vocab, self.tokenizer, self.retriever, fetch)

    def describe(self) -> dict:
        return {"model": self.model_info.ref, "model_id": self.model_info.id,
                "model_kind": self.model_info.kind, "retrieval_set": self.retrieval_set,
                "retrieval_set_version": self.set_version,
                "retrieval_set_digest": self.retriever.version.digest,
                "index_sha256": self.retriever.manifest.sha256,
                "index_factory": self.retriever.manifest.factory,
                "chunks": self.retriever.version.n_chunks, "since": self.since.isoformat()}


class DeploymentHolder:
    def __init__(self, ws: Workspace, current: Deployment, endpoint: str,
                 admission: AdmissionConfig = AdmissionConfig()):
        self.ws, self.current, self.endpoint = ws, current, endpoint
        self._swap_lock = threading.Lock()  # one swap at a time; readers never wait for it
        # the embedder's Rust tokenizer and torch run one request at a time (2 cores anyway)
        self.gate = ComputeGate(admission)
        self._token_key = token_key(ws.settings.home)
        self._row: int | None = None  # the catalog's deployments row of the current period
        self._lease: ServingLease | None = None  # taken with the first row this holder records

    @property
    def deployment_id(self) -> int | None:
        """The catalog's deployments row of the serving period now current (logged generations
        name it); during a swap it may still name the period before for an instant."""
        return self._row

    @classmethod
    def start(cls, ws: Workspace, model_ref: str, retrieval_set: str, endpoint: str,
              token: str | None = None, admission: AdmissionConfig = AdmissionConfig()
              ) -> "DeploymentHolder":
        info = ws.catalog.resolve_model(model_ref)
        if not info.config.get("retrieval"):
            raise ValueError(f"model {info.ref} is a {info.kind} without retrieval; serve a "
                             "retro or retrofit model")
        verified = load_verified(info)
        retriever = _smoke_test(ws.retriever(retrieval_set), retrieval_set)
        deployment = Deployment(info, verified.model, verified.vocab,
                                load_tokenizer(ws.embedder.space.model_path), retriever,
                                datetime.now(timezone.utc))
        # now, not `since`: a dead holder committed its rows before it died, so before this
        closed = reap_dead_leases(lease_dir(ws), ws.catalog, datetime.now(timezone.utc))
        if closed:
            log.warning("closed deployment rows %s of servers that died without stopping (ended_at = "
                        "this start, an upper bound)", closed)
        holder = cls(ws, deployment, endpoint, admission)
        holder._row = holder._record("start", deployment, token)
        return holder

    def swap(self, retrieval_set: str, token: str | None) -> Deployment:
        """Load and verify, then switch with one assignment. Raises (old set kept) on failure.
        Takes the compute gate ahead of queued requests: it waits for the running one only."""
        with self._swap_lock:
            retriever = self.ws.retriever(retrieval_set)  # digest, trust, ntotal: no compute
            with self.gate.priority():  # the smoke query embeds: the embedder is shared
                _smoke_test(retriever, retrieval_set)
            new = replace(self.current, retriever=retriever, since=datetime.now(timezone.utc))
            self.current = new
            self._row = self._record("swap", new, token, replaces=self._row)
        return new

    def close(self) -> None:
        """The server stops: its current serving period ends now (lineage: who could retrieve what, when)."""
        with self._swap_lock:
            if self._row is not None:
                self.ws.catalog.end_deployment(self._row)
                self._row = None
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    def _record(self, action: str, deployment: Deployment, token: str | None,
                replaces: int | None = None) -> int:
        if self._lease is None:
            self._lease = ServingLease(lease_dir(self.ws))
        row = self.ws.catalog.record_deployment(
            model_id=deployment.model_info.id, retrieval_set_version_id=deployment.set_version,
            action=action, endpoint=self.endpoint, token_id=token_id(token, self._token_key),
            replaces=replaces)
        self._lease.add(row)  # a kill between the commit and here leaves this one row unleased
        return row


def lease_dir(ws: Workspace) -> Path:
    return ws.settings.home.joinpath(*LEASE_DIR)


class ServingLease:
    """A live holder's claim on the deployment rows it opened: a file listing their ids, under an
    exclusive flock for the holder's life. The kernel drops the lock when the process dies, by
    SIGKILL too, so "unlocked" means "no live server holds these rows". The file is locked before
    it gets its `.lease` name, so no reaper can ever see it unlocked while its holder lives.
    flock needs a local folder (or NFS with locks); leases cover the servers of one home.
    Not `durable.write_atomic`: the rename names a locked file its holder keeps open and appends
    to; it publishes no finished bytes."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{os.getpid()}-", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)  # a dropped holder drops its lease
        self.path = Path(tmp).with_suffix(".lease")
        os.replace(tmp, self.path)

    def add(self, row_id: int) -> None:
        os.write(self._fd, f"{row_id}\n".encode())  # one write() of a few bytes: no kill splits it

    def release(self) -> None:
        """The holder stopped cleanly (its rows are closed): forget the lease."""
        self.path.unlink(missing_ok=True)
        self._close()


def reap_dead_leases(folder: Path, catalog, at: datetime) -> list[int]:
    """Close (ended_at = `at`, an upper bound of when they stopped) the open rows of every lease
    whose holder is dead, and remove those leases; returns the row ids closed."""
    closed: list[int] = []
    for path in sorted(folder.glob("*.lease")) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # another starting server reaped it first
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live server holds it
                continue
            with os.fdopen(os.dup(fd)) as handle:
                ids = [int(line) for line in handle.read().split() if line.isdigit()]
            closed += catalog.end_deployments(ids, at)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return closed


def _smoke_test(retriever: Retriever, retrieval_set: str) -> Retriever:
    if retriever.index.ntotal and not retriever.retrieve(["smoke test"], k=1)[0]:
        raise RuntimeError(f"retrieval set {retrieval_set!r} answered no neighbours to a smoke query")
    return retriever
