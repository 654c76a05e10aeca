"""The Celery route (deploy/celery), as commands: workers that take the steps of every run, a
broker check that fails a launch in one line instead of hanging, and the executor config both
ends share.

Each worker is `dagster-celery worker start` in its own process (here, or on another machine with
the same checkout and environment). Its pool process imports the stack once and runs one step
after another, so the per-step cost of importing Python, torch and Dagster is paid once per
worker, not once per step as under the multiprocess executor. Steps go to the queue
RETRO_OPS_CELERY_QUEUE names (default "dagster"); a worker takes those of the queues it listens on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from retro_ops.errors import BrokerUnavailableError

REPO = Path(__file__).resolve().parents[1]
CELERY_DIR = REPO / "deploy" / "celery"
CELERY_YAML = CELERY_DIR / "celery.yaml"  # the executor config block: workers and runs read it
CELERY_DEFINITIONS = CELERY_DIR / "definitions.py"
#: how `dagster asset materialize` loads the Celery code location (from the checkout's root)
CELERY_LOCATION = ("-f", str(CELERY_DEFINITIONS.relative_to(REPO)))
BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
QUEUE_ENV = "RETRO_OPS_CELERY_QUEUE"  # the Celery queue runs send their steps to and workers read (default: dagster)
DEFAULT_QUEUE = "dagster"  # dagster-celery's own default
BROKER_TIMEOUT_S = 3.0


def queue_name(env: Mapping[str, str] | None = None) -> str:
    return (os.environ if env is None else env).get(QUEUE_ENV) or DEFAULT_QUEUE


def executor_config(env: Mapping[str, str] | None = None) -> dict:
    """The executor config of deploy/celery/celery.yaml, with the steps sent to this queue."""
    config = yaml.safe_load(CELERY_YAML.read_text())["execution"]["config"]
    config["config_source"] = {**(config.get("config_source") or {}), "task_default_queue": queue_name(env)}
    return config


def check_broker(url: str, timeout: float = BROKER_TIMEOUT_S) -> None:
    """Connect to the broker once, within `timeout` seconds; BrokerUnavailableError (one line,
    naming the broker, its password hidden) when it does not answer."""
    from kombu import Connection  # the cluster extra's: imported only where a cluster is used

    if not url:
        raise BrokerUnavailableError(f"no Celery broker: set {BROKER_ENV} (e.g. pyamqp://guest@127.0.0.1:5672//)")
    connection = Connection(url, connect_timeout=timeout)
    shown = connection.as_uri()  # without the password
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:  # kombu raises the transport's own errors (socket, amqp, redis)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BrokerUnavailableError(f"Celery broker {shown} is not reachable ({reason}); start it or point "
                                     f"{BROKER_ENV} at a running one") from None
    finally:
        connection.release()


def celery_bin() -> Path:
    """The folder of this environment's `dagster-celery` and `celery` (the former runs the latter
    by name, so it must be on PATH)."""
    return Path(sys.executable).parent


def worker_command(queue: str, name: str, *, concurrency: int = 1) -> list[str]:
    """`dagster-celery worker start` for one worker taking `queue`'s steps, `concurrency` at a
    time. `-i assets.definitions`: the worker imports the stack (Dagster, torch, transformers,
    LanceDB, the assets) once, before it forks its pool, so every pool process (and one that
    replaces a crashed one) starts warm."""
    return ["dagster-celery", "worker", "start", "-A", "dagster_celery.app", "-y", str(CELERY_YAML.relative_to(REPO)),
            "-q", queue, "-n", name, "-i", "assets.definitions", "--", f"--concurrency={concurrency}"]


def materialize_command(select: str, partition: str | None = None, run_config: dict | None = None, *,
                        location: tuple[str, ...] = CELERY_LOCATION) -> list[str]:
    """`dagster asset materialize` of a code location, run from the checkout's root: by default
    the Celery one, where this process orchestrates and the workers run the steps. The one
    builder of the command: deploy/README.md shows it, `assets.launch.launch_runs` runs it."""
    command = ["dagster", "asset", "materialize", *location, "-d", ".", "--select", select]
    command += ["--partition", partition] if partition else []
    return command + (["--config-json", json.dumps(run_config)] if run_config else [])


def command_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker or run: the caller's, with this environment's executables
    first on PATH and this checkout importable."""
    base = dict(os.environ if env is None else env)
    path = base.get("PYTHONPATH", "")
    base["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    base["PATH"] = str(celery_bin()) + os.pathsep + base.get("PATH", "")
    return base


def _default_signals() -> None:  # a non-interactive shell may hand down SIGINT/SIGTERM ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def ready(self) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"{self.name}@" in text and " ready." in text


@dataclass
class CeleryWorkers:
    """`count` workers on `queue`, each its own process group, logging under `logs`; a context
    manager that stops them (SIGTERM, then SIGKILL) however its block ends."""

    queue: str
    count: int = 2
    logs: Path = Path(".")
    prefix: str = "retro_ops"
    concurrency: int = 1
    env: Mapping[str, str] | None = None
    ready_timeout_s: float = 300.0
    #: a cap on each worker's life (`timeout` around it), so a caller killed before it could stop
    #: them (SIGKILL runs no clean-up) leaves no worker behind for long; None: no cap
    lifetime_s: float | None = None
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> CeleryWorkers:
        check_broker(os.environ.get(BROKER_ENV, "") if self.env is None else self.env.get(BROKER_ENV, ""))
        self.logs.mkdir(parents=True, exist_ok=True)
        env = command_env(self.env)
        for i in range(self.count):
            name = f"{self.prefix}_w{i}"
            log = self.logs / f"{name}.log"
            with log.open("w") as out:
                cap = ["timeout", "--kill-after=30", str(int(self.lifetime_s))] if self.lifetime_s else []
                command = cap + worker_command(self.queue, name, concurrency=self.concurrency)
                process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True, preexec_fn=_default_signals)
            self.workers.append(Worker(name, process, log))
        deadline = time.monotonic() + self.ready_timeout_s
        while not all(w.ready() for w in self.workers):
            dead = [w for w in self.workers if w.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = dead[0].log.read_text(errors="replace")[-2000:] if dead else ""
                self.stop()
                raise RuntimeError(f"Celery worker {(dead or self.workers)[0].name} "
                                   f"{'exited' if dead else 'not ready in time'}: {tail}")
            time.sleep(0.5)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (warm shutdown: a running step finishes), then SIGKILL to what is left of
        each worker's process group (the pool processes too) after `timeout_s`."""
        for worker in self.workers:
            _signal_group(worker.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(_group(w.process.pid) for w in self.workers) and time.monotonic() < deadline:
            for worker in self.workers:
                worker.process.poll()  # reap the parent, so it leaves the group
            time.sleep(0.5)
        for worker in self.workers:
            _signal_group(worker.process, signal.SIGKILL)
            worker.process.wait()
        self.workers = []

    def __enter__(self) -> CeleryWorkers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # its own session: the group id is its pid
    except ProcessLookupError:
        pass


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return sorted(pids)
