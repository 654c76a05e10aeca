"""`retro-ops ui`: the Dagster webserver and daemon on this home's instance, stopped cleanly.

`dagster dev` runs the webserver, the daemon (sensors, automation, run queue) and the code
server. It runs in its own process group, so that stopping it stops all of them: on Ctrl-C or
SIGTERM we send SIGINT to the group (dagster's graceful shutdown), wait, then SIGKILL whatever
is left. A non-interactive parent may have left SIGINT/SIGTERM ignored; the child restores them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from retro_ops.cli.common import out, settings

DEFAULT_PORT = 3000
GRACE_SECONDS = 20.0
WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str, wanted: int | None) -> int:
    """`wanted`, or 3000 when free, else any free port."""
    if wanted:
        return wanted
    if _port_free(host, DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _restore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> int:
    """SIGINT to the process group, then SIGKILL to whatever outlived `grace` seconds."""
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        code = process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        code = None
    try:  # stragglers (a code server the webserver spawned) share the group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if code is None:
        code = process.wait()
    return code


def _wait_for_stop(process: subprocess.Popen) -> int:
    stopping: list[int] = []

    def request_stop(signum, _frame) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while process.poll() is None and not stopping:
            time.sleep(0.2)
        code = stop_group(process)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopping else code


def ui(
    port: Annotated[int | None, typer.Option(help="Port of the webserver (default: 3000 when free, "
                                                  "else a free one).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    automation: Annotated[bool, typer.Option(
        "--automation", help="Switch declarative automation on: the source observer and the "
                             "automation-condition sensor start running, so a changed corpus file or "
                             "a new exclusion re-materializes exactly its dependents.")] = False,
    interval: Annotated[int | None, typer.Option(
        min=1, help="Seconds between ticks of the source observer and the automation sensor "
                    "(default 30, or RETRO_OPS_AUTOMATION_INTERVAL).")] = None,
    scale_out: Annotated[bool, typer.Option(
        "--scale-out", help="Also show the sharded route (group scale_out: corpus x shard "
                            "partitions, index trained once and filled per shard); hidden otherwise, "
                            "as the demo does not take it.")] = False,
) -> None:
    """Start the Dagster UI (webserver and daemon, `dagster dev`) on this home's instance, with
    telemetry off; Ctrl-C or SIGTERM stops all of its processes."""
    from assets.automation import AUTOMATION_ENV, INTERVAL_ENV
    from assets.definitions import SCALE_OUT_ENV
    from assets.instance import dagster_instance

    resolved = settings()
    dagster_instance(resolved)  # writes dagster.yaml (telemetry off) on first use
    chosen = choose_port(host, port)
    env = {**os.environ, "DAGSTER_HOME": str(resolved.dagster_home), "RETRO_OPS_HOME": str(resolved.home)}
    if automation:
        env[AUTOMATION_ENV] = "1"
    if interval is not None:
        env[INTERVAL_ENV] = str(interval)
    env[SCALE_OUT_ENV] = "1" if scale_out else "0"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(WORKSPACE), "-h", host, "-p", str(chosen)]
    process = subprocess.Popen(command, env=env, cwd=WORKSPACE.parent, start_new_session=True,
                               preexec_fn=_restore_signals)
    out.print(f"Dagster UI on http://{host}:{chosen} (automation {'on' if automation else 'off'}; "
              "Ctrl-C to stop)", highlight=False)
    raise typer.Exit(_wait_for_stop(process))
