"""`retro-ops`: a thin front that hands `materialize` and `train` to a warm local worker.

Starting Python with Dagster, torch and the embedder costs seconds a command; a worker
(`retro-ops worker start`) has paid that once. Before importing anything heavy, the front asks
whether a worker answers for this home; if one does it sends argv, cwd and the environment the
commands read, and relays the output and exit code. Otherwise, or with RETRO_OPS_WORKER=0, the
command runs here exactly as it would without a worker.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from retro_ops.cli.relay import (
    CODE, ERR, EXIT, FORWARDED, OUT, REPLY, STARTED, WORKER_ENV, alive, command_of, connect, forwarded_env, frames,
    read_record, record_path, send_request, socket_path,
)
from retro_ops.settings import home_from_env


def _note(text: str) -> None:
    print(f"retro-ops: {text}", file=sys.stderr, flush=True)


def forward(argv: list[str]) -> int | None:
    """The exit code of `retro-ops ARGV` run by the home's worker, or None where no worker
    took it (none recorded, or its socket refused: then one line says so)."""
    home = home_from_env(os.environ)
    record = read_record(home)
    path = socket_path(home)
    if record is None or record.get("socket") != str(path):  # none, or a record copied with the home
        return None
    if record.get("code", CODE) != CODE:
        _note(f"the worker at {path} runs retro-ops from {record['code']}, not {CODE}; the command runs here")
        return None
    try:
        sock = connect(path)
    except OSError:
        _note(f"the worker at {path} did not answer; the command runs here")
        if not alive(record.get("pid")):
            record_path(home).unlink(missing_ok=True)  # its worker is gone: say so once
        return None
    with sock:
        sock.settimeout(None)  # a run takes as long as it takes
        send_request(sock, {"op": "run", "argv": argv, "cwd": os.getcwd(), "env": forwarded_env(os.environ),
                            "home": str(home), "pid": os.getpid()})
        try:
            return _relay(sock, path, home)
        except KeyboardInterrupt:
            _note(f"interrupted; the worker goes on with the command (its log: {home / 'logs' / 'worker.log'})")
            return 130


def _relay(sock, path: Path, home: Path) -> int | None:
    started = False
    for kind, payload in frames(sock):
        if kind in (OUT, ERR):
            stream = sys.stdout if kind == OUT else sys.stderr
            stream.buffer.write(payload)
            stream.buffer.flush()
        elif kind == STARTED:
            started = True
        elif kind == EXIT:
            return int(payload)
        elif kind == REPLY:  # declined before it ran (the worker is stopping): run it here
            _note(f"the worker at {path} {json.loads(payload).get('declined', 'declined')}; the command runs here")
            return None
    if not started:  # it went away (killed) before it began the command
        _note(f"the worker at {path} went away before it ran the command; the command runs here")
        return None
    _note(f"the worker at {path} closed the connection before the command ended "
          f"(its log: {home / 'logs' / 'worker.log'})")
    return 1


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get(WORKER_ENV, "") != "0" and command_of(argv) in FORWARDED:
        code = forward(argv)
        if code is not None:
            sys.exit(code)
    from retro_ops.cli.main import app

    sys.exit(app(prog_name="retro-ops"))


if __name__ == "__main__":
    main()
