"""The local worker's wire: where its socket and record are, and the frames both ends send.

Standard library only: the `retro-ops` front (`cli/entry.py`) imports this before anything
heavy, to ask whether a worker answers for the home, so it must cost milliseconds. A request is
one JSON line from the client; every answer is a frame: a one-byte kind, a four-byte length,
then that many bytes (stdout or stderr bytes as written, or JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path


#: 0 forces `retro-ops materialize` and `train` to run in their own process even where a local
#: worker answers for the home (`retro-ops worker start`)
WORKER_ENV = "RETRO_OPS_WORKER"
FORWARDED = ("materialize", "train")  # the commands a worker serves; the rest always run here
#: environment variables a request carries to the worker (what the commands read)
FORWARDED_ENV_PREFIXES = ("RETRO_OPS_", "DAGSTER_", "MLFLOW_")
FORWARDED_ENV_NAMES = ("COLUMNS",)
RECORD_NAME = "worker.json"  # in the home: pid, socket, start time and code of its worker
#: the retro_ops package this process runs: a front sends commands only to a worker that runs
#: the same one (not one started from another checkout or virtual environment)
CODE = str(Path(__file__).resolve().parents[1])
SOCKET_ROOT = Path("/tmp")  # not the home: a Unix socket path must fit in about 107 bytes
#: frame kinds: the command started, its stdout, its stderr, its exit code; a JSON answer
STARTED, OUT, ERR, EXIT, REPLY = b"s", b"o", b"e", b"x", b"j"
_HEADER = struct.Struct(">cI")


def socket_path(home: Path) -> Path:
    """One socket per user and home, in a folder only this user may enter."""
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    return SOCKET_ROOT / f"retro-ops-{os.getuid()}" / f"{digest}.sock"


def record_path(home: Path) -> Path:
    return home / RECORD_NAME


def read_record(home: Path) -> dict | None:
    """The home's worker record, or None where there is none (or it is unreadable: a worker
    killed while writing it leaves no record at all, since it is written atomically)."""
    try:
        record = json.loads(record_path(home).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def alive(pid: object) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped, does not; where /proc
    is missing, one is taken to run)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid now
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k in FORWARDED_ENV_NAMES}


def command_of(argv: list[str]) -> str | None:
    """The command in `retro-ops ARGV` (past the global `--profile VALUE`), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--profile":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def connect(path: Path, timeout: float | None = 5.0) -> socket.socket:
    """A connected socket; OSError (FileNotFoundError, ConnectionRefusedError) when no worker
    listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def send_request(sock: socket.socket, request: dict) -> None:
    sock.sendall(json.dumps(request).encode() + b"\n")


def read_request(sock: socket.socket, limit: int = 1 << 20) -> dict:
    """The client's request line (ValueError when it is not one)."""
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(65536)
        if not part:
            break
        data += part
        if len(data) > limit:
            raise ValueError(f"a request over {limit} bytes")
    request = json.loads(data)
    if not isinstance(request, dict):
        raise ValueError("a request must be a JSON object")
    return request


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def reply(sock: socket.socket, answer: dict) -> None:
    sock.sendall(frame(REPLY, json.dumps(answer).encode()))


def frames(sock: socket.socket) -> Iterator[tuple[bytes, bytes]]:
    """(kind, payload) of each frame until the worker closes the connection (or it is reset:
    a worker killed with a connection waiting)."""
    reader = sock.makefile("rb")
    while True:
        try:
            header = reader.read(_HEADER.size)
            kind, size = _HEADER.unpack(header)
            payload = reader.read(size)
        except (ConnectionResetError, struct.error):
            return
        if len(payload) < size:
            return
        yield kind, payload


def ask(home: Path, request: dict, timeout: float = 5.0) -> dict:
    """The worker's JSON answer to `request` (status, stop); OSError when none answers."""
    with connect(socket_path(home), timeout) as sock:
        send_request(sock, request)
        for kind, payload in frames(sock):
            if kind == REPLY:
                return json.loads(payload)
    raise ConnectionError(f"the worker at {socket_path(home)} closed the connection without an answer")
