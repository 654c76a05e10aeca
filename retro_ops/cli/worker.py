"""`retro-ops worker start|stop|status`: a warm local process that runs `materialize` and `train`.

A command in a fresh process pays seconds of imports (Dagster, torch, transformers, LanceDB)
and the embedder's load before its first step; a worker pays them once. While one answers for
the home, `retro-ops materialize` and `retro-ops train` are sent to it (retro_ops/cli/entry.py)
and print what they would print here; every other command, and every command under
RETRO_OPS_WORKER=0, runs in its own process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from retro_ops.cli.common import JsonOpt, emit_json, fail, out, settings
from retro_ops.cli.progress import duration
from retro_ops.cli.relay import WORKER_ENV, alive, ask, read_record, record_path, socket_path
from retro_ops.settings import HOME_ENV, home_from_env

worker_app = typer.Typer(no_args_is_help=True, help=(
    "A warm local process for this home that runs `materialize` and `train` without paying the "
    "start-up (imports, the embedder) each time. While one answers, those commands go to it "
    f"and print what they would print here; {WORKER_ENV}=0 runs them here. Restart it after "
    "changing or upgrading retro-ops: it runs the code it started with."))

DetachOpt = Annotated[bool, typer.Option(
    "--detach", help="Start it in the background (its own session, output in <home>/logs/worker.log) "
                     "and return once it answers.")]
WaitOpt = Annotated[float, typer.Option(
    "--wait", min=1, help="With --detach: seconds to wait for it to answer (imports and the "
                          "embedder load first).")]
StopTimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0, help="Seconds to wait for the command it is running to finish; then SIGTERM.")]


def log_file(home: Path) -> Path:
    return home / "logs" / "worker.log"


def _status(home: Path) -> dict | None:
    try:
        return ask(home, {"op": "status"})
    except OSError:
        return None


def _is_worker(pid: int) -> bool:
    """Whether `pid` looks like a worker (its command line names one), so a stale record's pid,
    since given to another process, is never signalled. Where /proc is missing: no."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"worker" in cmdline and b"start" in cmdline


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


@worker_app.command("start")
def start_command(detach: DetachOpt = False, wait: WaitOpt = 180.0, json_out: JsonOpt = False) -> None:
    """Start the worker for this home: in the foreground (log lines on stderr; Ctrl-C or
    `retro-ops worker stop` ends it), or with --detach in the background. With --json (and
    --detach): its status as JSON."""
    settings()  # the home's folders, as every command makes them
    home = home_from_env(os.environ)  # the path the front keys the socket by
    running = _status(home)
    if running:
        fail(f"a worker (pid {running['pid']}) already serves {home} on {running['socket']}")
    if detach:
        return _detach(home, wait, json_out)
    import typer.main

    from retro_ops.cli.main import app
    from retro_ops.cli.worker_server import Worker, WorkerError, log, terminate_on_sigterm, warm_up

    handler = logging.StreamHandler(sys.stderr)  # the log file under --detach
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    clock = time.perf_counter()
    log.info("worker pid %d for %s: importing the stack, loading the embedder", os.getpid(), home)
    warm_up()
    log.info("warmed up in %.1f s (imports, the embedder)", time.perf_counter() - clock)
    worker = Worker(home, typer.main.get_command(app))
    try:
        worker.listen()
    except (WorkerError, OSError) as exc:
        fail(str(exc))
    terminate_on_sigterm()
    worker.serve()


def _detach(home: Path, wait: float, json_out: bool) -> None:
    """`worker start` again as a child in its own session, then wait until it answers."""
    log = log_file(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", "retro_ops.cli.main", "worker", "start"], cwd=os.getcwd(),
            env={**os.environ, HOME_ENV: str(home)}, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait
    while (status := _status(home)) is None or status["pid"] != child.pid:
        if child.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(nothing)"]
            fail(f"the worker exited ({child.returncode}) before it answered: {last[0]} (log: {log})")
        if time.monotonic() > deadline:
            child.terminate()
            fail(f"the worker did not answer within {wait:.0f} s (log: {log})")
        time.sleep(0.2)
    if json_out:
        emit_json({**status, "log": str(log)})
        return
    out.print(f"worker pid {status['pid']} serves {home} on {status['socket']}\nits log: {log}\n"
              "stop it with `retro-ops worker stop`", highlight=False, soft_wrap=True)


@worker_app.command("status")
def status_command(json_out: JsonOpt = False) -> None:
    """Whether a worker answers for this home: its pid, uptime, commands served, what it runs.
    Exit code 1 where none answers."""
    home = home_from_env(os.environ)
    status = _status(home)
    if status is None:
        record = read_record(home)
        stale = record if record and record.get("socket") == str(socket_path(home)) else None
        if json_out:
            emit_json({"running": False, "home": str(home), "stale_record": stale})
        else:
            note = f" (a stale record names pid {stale.get('pid')} on {stale.get('socket')})" if stale else ""
            out.print(f"no worker answers for {home}{note}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if json_out:
        emit_json({"running": True, **status, "log": str(log_file(home))})
        return
    doing = f"running `retro-ops {' '.join(status['command'])}`" if status["command"] else "idle"
    out.print(f"worker pid {status['pid']} serves {home} on {status['socket']}\n"
              f"up {duration(status['uptime_s'])}, {status['served']} commands served, {doing}, "
              f"{status['waiting']} waiting\nits log: {log_file(home)}", highlight=False, soft_wrap=True)


@worker_app.command("stop")
def stop_command(timeout: StopTimeoutOpt = 60.0, json_out: JsonOpt = False) -> None:
    """Ask the home's worker to exit once its running command (if any) has finished; SIGTERM
    after --timeout seconds. A worker that does not answer but still runs gets SIGTERM."""
    home = home_from_env(os.environ)
    record = read_record(home)
    try:
        pid, how = ask(home, {"op": "stop"})["pid"], "stopped"
    except OSError:
        pid, how = (record or {}).get("pid"), "terminated (it did not answer)"
        if not isinstance(pid, int) or not alive(pid) or not _is_worker(pid):
            pid = None
    if pid is not None and (how != "stopped" or not _gone_within(pid, timeout)):
        if how == "stopped":
            how = f"terminated (SIGTERM after {timeout:.0f} s)"
        os.kill(pid, signal.SIGTERM)
        if not _gone_within(pid, 10.0):
            fail(f"worker pid {pid} of {home} did not exit 10 s after SIGTERM")
    if record is not None and (pid is None or record.get("pid") == pid):
        record_path(home).unlink(missing_ok=True)  # the worker removes it itself; not when killed
    result = {"home": str(home), "pid": pid, "stopped": pid is not None, "how": how if pid else "none running"}
    if json_out:
        emit_json(result)
    elif pid is None:
        out.print(f"no worker runs for {home}" + (" (removed its stale record)" if record else ""),
                  highlight=False, soft_wrap=True)
    else:
        out.print(f"worker pid {pid} of {home}: {how}", highlight=False, soft_wrap=True)
