"""The warm local worker: one long-lived process per home that runs `materialize` and `train`
for the `retro-ops` front, so a command pays neither the imports nor the embedder's load.

It listens on a Unix socket in a folder only its user may enter. A thread answers each
connection at once (status, stop, or a command to queue); the main thread runs the commands one
at a time, because Dagster's in-process runs install signal handlers, which only the main thread
may do. A command runs as it would in its own process: the client's argv, working folder and
environment (`relay.forwarded_env`) for its duration, its stdout and stderr sent back as frames.
A client that goes away mid-command loses the rest of the output; the command still finishes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import socket
import stat
import sys
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from retro_ops.cli.common import Invocation
from retro_ops.cli.relay import (
    CODE, ERR, EXIT, FORWARDED, OUT, STARTED, command_of, connect, forwarded_env, frame, read_record, read_request,
    record_path, reply, socket_path,
)
from retro_ops.durable import write_atomic
from retro_ops.settings import HOME_ENV

LAUNCHED_BY = "cli-worker"  # the `retro_ops/launched_by` tag of the Dagster runs a worker launches
SEND_TIMEOUT_S = 60.0  # a client that reads nothing for this long is dropped (its command goes on)
REQUEST_TIMEOUT_S = 5.0  # to send the request line once connected
log = logging.getLogger("retro_ops.worker")


class WorkerError(RuntimeError):
    """A worker that cannot start (its socket folder is not private, one already answers)."""


class Terminated(BaseException):
    """SIGTERM: not a SystemExit, which a command's own exit would be taken for."""


def terminate_on_sigterm() -> None:
    """SIGTERM ends the worker like Ctrl-C: the running command stops, the socket and record go."""
    import signal

    def stop(signum, frame) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, stop)


def private_folder(folder: Path) -> Path:
    """`folder`, made 0700 if missing; refused if it is a link, another user's, or open to others."""
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WorkerError(f"{folder} must be a folder of user {os.getuid()} that only it may enter (mode 0700)")
    return folder


class _Sink(io.RawIOBase):
    """One stream of a command (stdout or stderr) as frames on the client's socket."""

    def __init__(self, client: _Client, kind: bytes) -> None:
        self.client, self.kind = client, kind

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.client.send(frame(self.kind, bytes(data)))
        return len(data)


@dataclass
class _Client:
    sock: socket.socket
    request: dict
    lock: threading.Lock = field(default_factory=threading.Lock)
    gone: bool = False  # the client went away: what is left is not sent

    def send(self, data: bytes) -> None:
        with self.lock:  # progress comes from a heartbeat thread too
            if self.gone:
                return
            try:
                self.sock.sendall(data)
            except OSError:  # disconnected or not reading: the command goes on without it
                self.gone = True

    def stream(self, kind: bytes) -> io.TextIOWrapper:
        return io.TextIOWrapper(_Sink(self, kind), encoding="utf-8", errors="replace",
                                line_buffering=True, write_through=True)

    def describe(self) -> str:
        return f"`retro-ops {' '.join(self.request.get('argv', []))}` for pid {self.request.get('pid', '?')}"


def _exit_code(code: object) -> int:
    """What a process exiting with SystemExit(code) returns."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


class Worker:
    """Serves one home on `socket_path(home)` until stopped; `command` is the click command of
    the `retro-ops` app (the front forwards only `relay.FORWARDED` to it)."""

    def __init__(self, home: Path, command) -> None:
        self.home, self.command = home, command
        self.socket = socket_path(home)
        self.started = time.time()
        self.served = 0
        self.pending = 0  # commands accepted and not finished (the running one included)
        self.current: _Client | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Client | None] = queue.Queue()
        self._listener: socket.socket | None = None
        self._inode = 0  # of the socket file this worker bound (a later worker may bind the same path)

    def status(self) -> dict:
        current = self.current
        return {"pid": os.getpid(), "home": str(self.home), "socket": str(self.socket), "started": self.started,
                "uptime_s": round(time.time() - self.started, 1), "served": self.served,
                "command": current.request.get("argv") if current else None,
                "waiting": max(0, self.pending - (1 if current else 0)), "python": sys.executable,
                "code": CODE}

    def listen(self) -> None:
        """Bind the socket (refused where a worker already answers on it) and write the record."""
        private_folder(self.socket.parent)
        if self.socket.exists():
            try:
                connect(self.socket).close()
            except OSError:
                self.socket.unlink()  # left by a worker that was killed
            else:
                raise WorkerError(f"a worker already answers for {self.home} on {self.socket}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket))
        os.chmod(self.socket, 0o600)
        self._inode = os.stat(self.socket).st_ino
        listener.listen(16)
        self._listener = listener
        write_atomic(record_path(self.home), json.dumps(
            {"pid": os.getpid(), "socket": str(self.socket), "started": self.started, "home": str(self.home),
             "code": CODE},
        ).encode())

    def serve(self) -> None:
        """Accept on a thread; run commands here, one at a time, until stopped (or SIGTERM)."""
        threading.Thread(target=self._accept, args=(self._listener,), name="worker-accept", daemon=True).start()
        log.info("worker pid %d serves %s on %s", os.getpid(), self.home, self.socket)
        try:
            while True:
                client = self._queue.get()
                if client is None:
                    break
                self._run(client)
        except (Terminated, KeyboardInterrupt):
            log.info("interrupted (SIGTERM or Ctrl-C)")
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening; remove the socket and the record where they are still this worker's."""
        self.stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
            self._unlink_socket()
        if (read_record(self.home) or {}).get("pid") == os.getpid():
            record_path(self.home).unlink(missing_ok=True)
        while not self._queue.empty():  # accepted but never run: their fronts run them themselves
            waiting = self._queue.get_nowait()
            if waiting is not None:
                self._decline(waiting, "stopped before it ran")
        log.info("worker pid %d stopped after %d commands", os.getpid(), self.served)

    def _unlink_socket(self) -> None:
        try:
            if os.stat(self.socket).st_ino == self._inode:
                self.socket.unlink()
        except FileNotFoundError:
            pass

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:  # closed by close()
                return
            try:
                self._answer(sock)
            except (OSError, ValueError) as exc:  # a client that sent no request or hung up
                log.warning("dropped a connection: %s", exc)
                sock.close()

    def _answer(self, sock: socket.socket) -> None:
        sock.settimeout(REQUEST_TIMEOUT_S)
        request = read_request(sock)
        op = request.get("op")
        if op == "status":
            reply(sock, self.status())
            sock.close()
        elif op == "stop":
            reply(sock, {**self.status(), "stopping": True})
            sock.close()
            log.info("asked to stop%s", f" after {self.current.describe()}" if self.current else "")
            self.stopping.set()
            self._queue.put(None)
            self._unlink_socket()  # new commands run in their own process from now on
        elif op == "run":
            self._enqueue(_Client(sock, request))
        else:
            reply(sock, {"error": f"unknown op {op!r}"})
            sock.close()

    def _enqueue(self, client: _Client) -> None:
        client.sock.settimeout(SEND_TIMEOUT_S)
        argv = client.request.get("argv")
        if client.request.get("home") != str(self.home):
            return self._decline(client, f"serves {self.home}, not {client.request.get('home')}")
        if not isinstance(argv, list) or command_of([str(a) for a in argv]) not in FORWARDED:
            return self._decline(client, f"runs only {' and '.join(FORWARDED)}")
        with self._lock:
            ahead, self.pending = self.pending, self.pending + 1
            current = self.current
        if ahead:
            before = current.describe() if current else "the command before it"
            client.send(frame(ERR, f"retro-ops: the worker is busy with {before}; this command waits for it "
                                   f"({ahead} ahead)\n".encode()))
        self._queue.put(client)

    def _decline(self, client: _Client, reason: str) -> None:
        """Tell the front to run the command itself (it may have gone: nothing to tell then)."""
        try:
            reply(client.sock, {"declined": reason})
        except OSError:
            pass
        client.sock.close()

    def _run(self, client: _Client) -> None:
        if self.stopping.is_set():
            self._decline(client, "is stopping")
            with self._lock:
                self.pending -= 1
            return
        self.current, clock = client, time.perf_counter()
        client.send(frame(STARTED, b""))  # from here on, a front never runs the command itself
        code = 1
        try:
            code = self._invoke(client)
        finally:
            client.send(frame(EXIT, str(code).encode()))
            client.sock.close()
            with self._lock:
                self.current, self.pending, self.served = None, self.pending - 1, self.served + 1
            log.info("%s: exit %d after %.1f s%s", client.describe(), code, time.perf_counter() - clock,
                     " (the client went away)" if client.gone else "")

    def _invoke(self, client: _Client) -> int:
        """Run the command with the client's argv, folder and environment, then put ours back."""
        request = client.request
        saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
        out, err = client.stream(OUT), client.stream(ERR)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    os.chdir(request.get("cwd") or saved_cwd)
                except OSError as exc:
                    print(f"error: the worker cannot enter {request.get('cwd')}: {exc.strerror}", file=sys.stderr)
                    return 2
                for name in forwarded_env(os.environ):  # the client's set replaces ours
                    del os.environ[name]
                os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
                os.environ[HOME_ENV] = str(self.home)  # what the client resolved, now absolute
                argv = [str(a) for a in request["argv"]]
                sys.argv = ["retro-ops", *argv]
                return self._main(argv)
        finally:
            out.flush(), err.flush()
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            sys.argv = saved_argv

    def _main(self, argv: list[str]) -> int:
        try:
            self.command.main(args=argv, prog_name="retro-ops", standalone_mode=True,
                              obj=Invocation(launched_by=LAUNCHED_BY))
        except SystemExit as exc:
            return _exit_code(exc.code)
        except Exception:  # what Python prints for an uncaught error, to the client; the worker lives on
            traceback.print_exc()
            return 1
        return 0


#: The library stages the asset bodies import when they run (the code location itself loads
#: without them: assets/definitions.py), imported by a worker before its first command.
WARM_MODULES = ("retro_ops.features.pipeline", "retro_ops.governance.corpus_scores", "retro_ops.retrieval.sets",
                "retro_ops.retrieval.index.route", "retro_ops.training.prepare", "retro_ops.training.run")


def warm_up() -> None:
    """Import the stack (Dagster, torch, transformers, LanceDB, FAISS, the stages the steps run)
    and load the embedder, so the first command pays neither."""
    import importlib

    import assets.definitions  # noqa: F401  what a command's run loads first

    for module in WARM_MODULES:
        importlib.import_module(module)
    from assets.instance import dagster_instance
    from assets.resources import EmbedderResource
    from retro_ops.cli.common import open_catalog, settings

    resolved = settings()
    EmbedderResource().load()
    open_catalog(resolved).close()
    with dagster_instance(resolved):
        pass
