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
