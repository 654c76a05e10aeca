"""int8 inference of the frozen encoder through ONNX Runtime (VNNI kernels on this CPU).

The encoder is exported once to ONNX (TorchScript exporter: no extra packages) and quantized
with ONNX Runtime's own dynamic quantizer: int8 weights per output channel, activations
quantized per batch at run time. Measured on 800 real chunks (bench/embedding.py): per-tensor
weights gave recall@10 0.71 against the fp32 neighbours, per-channel 0.86, and keeping the six
FFN down-projections in fp32 (their post-GELU inputs have the outliers) 0.90. `RECIPE` goes into
the embedding-space id, so a change of recipe or of ONNX Runtime is another space.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from retro_ops.durable import atomic_path
from retro_ops.errors import EmbedderError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
RECIPE = {"weights": "int8 per-channel", "activations": "uint8 dynamic",
          "fp32": "FFN down-projections", "opset": OPSET}


def recipe() -> dict:
    """What, besides the weights, decides the int8 vectors."""
    import onnxruntime

    return {**RECIPE, "onnxruntime": onnxruntime.__version__}


class _Hidden(torch.nn.Module):
    """The encoder with positional inputs and its last hidden state as the one output."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _ffn_down_projections(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
            if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name]


def export_int8(model: torch.nn.Module, example: dict[str, torch.Tensor], target: Path) -> None:
    """Write the quantized encoder to `target` (ONNX Runtime writes a temp file, renamed into
    place: a killed export leaves no half-written model under the name a later run would load)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, atomic_path(target) as int8:
        fp32 = Path(tmp) / "fp32.onnx"  # the export quantized from; never published
        axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")}
        with warnings.catch_warnings():  # tracer notes on shape checks that hold for BERT
            warnings.simplefilter("ignore")
            torch.onnx.export(_Hidden(model), tuple(example[n] for n in INPUTS), str(fp32),
                              input_names=list(INPUTS), output_names=["hidden"],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=_ffn_down_projections(fp32),
                         extra_options={"DefaultTensorType": 1})  # 1 = float: shapes onnx cannot infer


class OrtEncoder:
    """An ONNX Runtime session over the quantized encoder: (B, T) int64 inputs -> (B, T, dim)."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own classes; re-raised with the path named
            raise EmbedderError(f"{path}: not a loadable int8 encoder ({exc})") from exc

    def __call__(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {name: encoded[name].numpy().astype(np.int64) for name in INPUTS}
        return torch.from_numpy(self.session.run(None, feed)[0])
