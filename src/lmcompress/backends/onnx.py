"""The ONNX Runtime backend: a CPU session over a run's model.onnx, behind the call signature evaluation uses for
PyTorch models (`OnnxClassifier(**batch).logits`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LmcError
from ..models.load import first_line

MODEL_FILE = "model.onnx"
# ORT's SkipLayerNormalization fusion made every LayerNorm ~10x slower on this CPU (int8 minilm-l6, batch 32:
# 71 ms with it, 52 ms without; benchmarks/shrink.py), so our sessions switch it off and run manifests record it.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def require_onnx() -> None:
    try:
        for name in ("onnx", "onnxruntime", "onnxscript"):
            importlib.import_module(name)
    except ImportError as exc:
        raise LmcError(f"ONNX support needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                       "pip install onnx onnxscript onnxruntime") from None


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations except those in DISABLED_OPTIMIZERS."""
    require_onnx()
    import onnxruntime as ort  # loads in a second or two: only for ONNX run directories

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # ORT's worker threads spin after each run: with several sessions timed side by side the spinning took the
    # cores from the next one (8 int8 sessions interleaved, 2 threads: 59-69 ms each with spinning, 30 ms without)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:
        raise LmcError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None


def input_names(sess) -> tuple[str, ...]:
    return tuple(i.name for i in sess.get_inputs())


def run_session(sess, batch: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Feed the graph's inputs `names` (int64) -> every output by name (logits, or start_logits and end_logits)."""
    outputs = [o.name for o in sess.get_outputs()]
    return dict(zip(outputs, sess.run(outputs, {name: batch[name].numpy().astype(np.int64) for name in names})))


def onnx_param_count(path: Path) -> int:
    """Elements of the graph's weights: float and int8 initialisers and float Constant tensors (the exporter keeps
    some small ones as Constant nodes). Shape and index constants (int64) are not weights. Identical tensors (e.g.
    untrained all-zero biases) are stored once by the exporter and so counted once."""
    import onnx  # only to count a graph's weights: onnx is a large import the session itself does not need

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8,
               onnx.TensorProto.UINT8}
    total = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type in weights and len(i.dims) >= 1)
    floats = weights - {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in floats and len(attr.t.dims) >= 1:
                    total += int(np.prod(attr.t.dims))
    return total


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind the call signature evaluation uses for PyTorch models."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        self.path = path
        self.session = session(path, threads)
        self.param_count = onnx_param_count(path)
        self.input_names = input_names(self.session)  # once: forward is what latency measurements time

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_: Any) -> SimpleNamespace:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            batch["token_type_ids"] = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        outputs = run_session(self.session, batch, self.input_names)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in outputs.items()}, loss=None)
