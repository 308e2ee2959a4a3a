"""How close a model runs to what this processor can do: the multiply-adds a forward pass needs (from the config)
against this machine's measured matrix-multiply peak per precision. "% of peak" says how much speed a runtime
leaves on the table; it is an upper bound to aim at, never reached by a whole model (attention, norms and
memory traffic are not matmuls)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from .models.families import family_of
from .models.load import first_line
from .timing import torch_threads

log = logging.getLogger("lmcompress")
PEAK_SIZE = 1024  # square matmul: large enough to be compute-bound, small enough to time in a second


def macs_per_token(layers: int, hidden: int, ffn: int, seq_len: int) -> float:
    """Multiply-adds per token of a transformer encoder's layers (projections, FFN, attention scores and mixing)."""
    return layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * seq_len * hidden)


def forward_flops(folder: Path, batch: int, seq_len: int) -> float | None:
    """FLOPs (2 per multiply-add) of one forward pass of the run's transformer over batch x seq_len tokens; None when
    the run is not a transformer of a known family (a static-embedding table costs lookups, not matmuls)."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError):
        return None
    family = family_of(config)
    if family is None:
        return None
    return 2.0 * batch * seq_len * macs_per_token(family.depth(config), family.width(config), family.ffn(config), seq_len)


def _best_rate(call: Callable[[], object], flops: float, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` calls after two warm-up calls."""
    for _ in range(2):
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


# The int8 peak's one-node graph declares the oldest IR and opset that hold MatMulInteger: onnx stamps its own
# newest IR version otherwise, which an older onnxruntime refuses (onnx 1.23 writes IR 14; onnxruntime 1.30 reads 13).
PEAK_IR_VERSION, PEAK_OPSET = 7, 13


def int8_peak_model(n: int = PEAK_SIZE) -> bytes:
    """A serialized ONNX graph of one MatMulInteger (uint8 [n, n] x int8 [n, n] weights -> int32), the kernel
    ONNX Runtime's int8 models use."""
    import onnx  # only to build the one-node graph the int8 peak is timed on
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).integers(-128, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
        [onnx.numpy_helper.from_array(weights, "b")])
    model = helper.make_model(graph, ir_version=PEAK_IR_VERSION, opset_imports=[helper.make_opsetid("", PEAK_OPSET)])
    return model.SerializeToString()


def _int8_matmul(threads: int) -> Callable[[], object] | None:
    """The int8 peak's call on PEAK_SIZE squares; None without onnx / onnxruntime, or where this onnxruntime cannot
    run the graph (the report then shows no int8 peak rather than failing)."""
    try:
        import onnxruntime as ort
        model = int8_peak_model()
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        log.warning("no int8 peak: ONNX Runtime cannot run its MatMulInteger graph (%s)", first_line(exc))
        return None
    a = np.random.default_rng(1).integers(0, 255, (PEAK_SIZE, PEAK_SIZE), dtype=np.uint8)
    return lambda: session.run(["c"], {"a": a})


@torch.inference_mode()
def matmul_peaks(threads: int, bf16: bool) -> dict[str, float | None]:
    """This machine's measured matmul throughput, GFLOP/s (GOP/s for int8), on `threads` threads: fp32 and bf16
    (PyTorch; bf16 only where the CPU has bf16 kernels, else None) and int8 (ONNX Runtime; None without it)."""
    flops = 2.0 * PEAK_SIZE ** 3
    with torch_threads(threads):
        peaks: dict[str, float | None] = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(PEAK_SIZE, PEAK_SIZE, dtype=dtype), torch.randn(PEAK_SIZE, PEAK_SIZE, dtype=dtype)
            peaks[name] = round(_best_rate(lambda a=a, b=b: a @ b, flops), 1) if name == "fp32" or bf16 else None
        int8 = _int8_matmul(threads)
        peaks["int8"] = round(_best_rate(int8, flops), 1) if int8 else None
        return peaks
