"""The warm local worker end to end: real processes, real Dagster runs, the `retro-ops` front
(`python -m retro_ops.cli.entry`, what the console script runs) in a subprocess each time.

One worker serves the module's home through its first tests; then it is killed (a stale record:
commands run here, with a note), and a second one started over what it left and stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retro_ops.cli.relay import alive, command_of, connect, socket_path
from retro_ops.settings import HOME_ENV, Settings

REPO = Path(__file__).resolve().parents[1]
TAG = "retro_ops/launched_by"


@pytest.fixture(scope="module")
def home(sites, tmp_path_factory) -> Path:
    """A copy of the `small` site (corpus `small`, chunked and embedded) for this module."""
    return sites.copy("small", tmp_path_factory.mktemp("worker")) / "home"


def cli(home: Path, *args: str, front: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`retro-ops ARGS` in its own process: through the front, or the app itself (`front=False`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RETRO_OPS_", "DAGSTER_"))}
    module = "retro_ops.cli.entry" if front else "retro_ops.cli.main"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          env={**base, HOME_ENV: str(home), **env}, timeout=300)


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def refused_within(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connect(path, timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} still accepts {seconds:.0f} s after its worker was killed")


def start(home: Path) -> dict:
    started = cli(home, "worker", "start", "--detach", "--json", front=False)
    assert started.returncode == 0, started.stderr
    return json.loads(started.stdout)


def status(home: Path) -> dict:
    return json.loads(cli(home, "worker", "status", "--json", front=False).stdout)


@pytest.fixture(scope="module")
def workers(home: Path):
    """The module's workers (pids), the first one started: none outlives the module."""
    pids = [start(home)["pid"]]
    yield pids
    cli(home, "worker", "stop", front=False)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def outputs() -> dict:
    """What one test's command printed, for a later test to compare with."""
    return {}


def shape(outcomes: list[dict]) -> list:
    """A materialization's JSON without its values: keys, assets, metadata keys and checks."""
    return [(sorted(o), o["partition"], o["success"],
             [(a["asset"], sorted(a["metadata"]), sorted(a["checks"])) for a in o["assets"]]) for o in outcomes]


def launched_by(home: Path, run_id: str) -> str:
    from assets.instance import dagster_instance

    with dagster_instance(Settings(home=home)) as instance:
        return instance.get_run_by_id(run_id).tags[TAG]


def test_the_front_imports_nothing_heavy():
    """The front decides before typer, rich, Dagster or torch are imported (milliseconds)."""
    code = "import sys, retro_ops.cli.entry; print(' '.join(sorted(sys.modules)))"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = {"typer", "click", "rich", "dagster", "torch", "transformers", "lancedb", "sqlalchemy", "numpy"}
    assert heavy & {m.split(".")[0] for m in probe.stdout.split()} == set()


def test_which_commands_are_forwarded():
    assert command_of(["--profile", "prod", "materialize", "--corpus", "x"]) == "materialize"
    assert command_of(["--profile=prod", "train"]) == "train"
    assert command_of(["--help"]) is None


def test_a_record_from_elsewhere_is_not_followed(tmp_path, monkeypatch, capsys):
    """A record copied with the home (another home's socket) is passed over in silence; one of a
    worker that runs retro-ops from another checkout, with a line: the command runs here."""
    from retro_ops.cli.entry import forward
    from retro_ops.cli.relay import CODE, record_path

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv(HOME_ENV, str(home))
    record_path(home).write_text(json.dumps({"pid": 1, "socket": "/tmp/retro-ops-0/elsewhere.sock", "code": CODE}))
    assert forward(["materialize"]) is None and capsys.readouterr().err == ""
    path = socket_path(home.resolve())
    record_path(home).write_text(json.dumps({"pid": 1, "socket": str(path), "code": "/elsewhere/retro_ops"}))
    assert forward(["materialize"]) is None
    assert capsys.readouterr().err == (f"retro-ops: the worker at {path} runs retro-ops from /elsewhere/retro_ops, "
                                       f"not {CODE}; the command runs here\n")


def test_materialize_is_served_by_the_worker(home, workers, outputs):
    done = cli(home, "materialize", "--corpus", "small", "--json")
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    from assets.launch import RunOutcome

    assert [sorted(o) for o in outcomes] == [sorted(f.name for f in dataclasses.fields(RunOutcome))]
    assert outcomes[0]["success"] and outcomes[0]["partition"] == "small"
    assert "run 1/1: small" in done.stderr  # progress, as lines
    assert launched_by(home, outcomes[0]["run_id"]) == "cli-worker"
    answer = status(home)
    assert (answer["running"], answer["pid"], answer["served"], answer["command"]) == (True, workers[0], 1, None)
    outputs["worker"] = shape(outcomes)


def test_an_error_comes_back_and_a_second_command_waits(home, workers):
    """A command sent while another runs is told it waits; its error line and exit code come
    back as a process of its own would give them."""
    first = subprocess.Popen([sys.executable, "-m", "retro_ops.cli.entry", "materialize", "--corpus", "small"],
                             cwd=REPO, env={**os.environ, HOME_ENV: str(home)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while status(home)["command"] is None:
        assert first.poll() is None, "the first command ended before the worker was seen running it"
    second = cli(home, "materialize", "--corpus", "nope")
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.splitlines() == [
        "retro-ops: the worker is busy with `retro-ops materialize --corpus small` for pid "
        f"{first.pid}; this command waits for it (1 ahead)",
        "error: unknown corpus nope (known: small)"]
    assert status(home)["served"] == 3


def test_worker_zero_runs_the_command_here(home, workers):
    done = cli(home, "materialize", "--corpus", "nope", RETRO_OPS_WORKER="0")
    assert (done.returncode, done.stderr.strip()) == (2, "error: unknown corpus nope (known: small)")
    assert status(home)["served"] == 3


def test_a_stale_record_runs_the_command_here(home, workers, outputs):
    os.kill(workers[0], signal.SIGKILL)
    assert gone_within(workers[0], 10)
    refused_within(socket_path(home.resolve()), 10)  # its last threads may hold the socket a moment
    done = cli(home, "materialize", "--corpus", "small", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (f"retro-ops: the worker at {socket_path(home.resolve())} did not "
                                           "answer; the command runs here")
    outcomes = json.loads(done.stdout)
    assert launched_by(home, outcomes[0]["run_id"]) == "cli"
    assert shape(outcomes) == outputs["worker"]  # the same JSON, run here or by the worker


def test_start_over_a_killed_worker_then_stop_leaves_nothing(home, workers):
    info = start(home)  # over the socket file and record the killed one left
    workers.append(info["pid"])
    assert status(home)["pid"] == info["pid"]
    stopped = cli(home, "worker", "stop", "--json", front=False)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["how"] == "stopped"
    assert gone_within(info["pid"], 30)
    assert not Path(info["socket"]).exists() and not (home / "worker.json").exists()
    assert cli(home, "worker", "status", front=False).returncode == 1
