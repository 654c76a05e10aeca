"""Shared test helpers (not fixtures): tiny model and training specs."""

def _tiny():
    """A demo-shaped model (m = 64, real vocabulary) small enough to train in seconds."""
    from retro_ops.model import RetroConfig

    return RetroConfig.demo(seq_len=128, d_model=32, n_layer=3, n_head=2, d_ff=64, enc_d_model=32,
                            enc_n_layer=1, enc_n_head=2, enc_d_ff=64, cca_start_layer=2)


TINY = _tiny()


def tiny_spec(steps: int = 20, retrieval_set: str = "small", **train):
    from retro_ops.training.neighbours import NeighbourConfig
    from retro_ops.training.prepare import TrainingSpec
    from retro_ops.training.trainer import TrainConfig

    return TrainingSpec(corpus="small", retrieval_set=retrieval_set, model=TINY,
                        train=TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=2,
                                          checkpoint_every=4, **train),
                        neighbours=NeighbourConfig(k=2))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_in_thread(app, port: int, *, stop_timeout: float = 10.0):
    """A real uvicorn server for `app` on 127.0.0.1:`port` in a daemon thread: yields its base URL
    once /health answers, and stops it on exit (a context manager)."""
    import threading
    import time
    from contextlib import contextmanager

    import requests
    import uvicorn

    @contextmanager
    def running():
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/health", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the test server on {base} did not answer /health in 30 s") from None
                time.sleep(0.1)
        try:
            yield base
        finally:
            server.should_exit = True
            thread.join(timeout=stop_timeout)

    return running()


def _restore_signals() -> None:  # a non-interactive parent may have left SIGINT ignored
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_ui(port: int, log, *args: str):
    """`retro-ops ui --port PORT ARGS` as a real child process (its own session, so a test can
    signal it alone), its output in the file `log` (a pipe could fill and stall it); the home
    comes from the environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    with open(log, "wb") as sink:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "retro-ops"), "ui", "--port", str(port), *args],
            cwd=Path(__file__).resolve().parents[1], env={**os.environ}, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_restore_signals)


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    import requests

    answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}},
                           timeout=20)
    answer.raise_for_status()
    return answer.json()


ASSET_NODES = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } partitionDefinition { name } } }"


def wait_for_asset_graph(process, port: int, log, timeout: float = 150.0) -> dict:
    """The UI's asset nodes by key, once the webserver answers and the code location loaded."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"retro-ops ui exited with {process.returncode}: "
                               f"{open(log, errors='replace').read()[-2000:]}")
        try:
            nodes = graphql(port, ASSET_NODES).get("data", {}).get("assetNodes")
            if nodes:
                return {"/".join(n["assetKey"]["path"]): n for n in nodes}
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"the Dagster UI did not serve the asset graph within {timeout:.0f} s")
