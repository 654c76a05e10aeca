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
