"""How close a model runs to what this processor can do: the multiply-adds a forward pass needs (from the config)
against this machine's measured matrix-multiply peak per precision. "% of peak" says how much speed a runtime
leaves on the table; it is an upper bound to aim at, never reached by a whole model (attention, norms and
memory traffic are not matmuls)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from .models.families import family_of
from .timing import torch_threads

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


def _int8_matmul(threads: int) -> Callable[[], object] | None:
    """An ONNX Runtime MatMulInteger (uint8 x int8, the kernel its int8 models use) on PEAK_SIZE squares."""
    try:
        import onnx  # only to build the one-node graph the int8 peak is timed on
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    n = PEAK_SIZE
    weights = np.random.default_rng(0).integers(-128, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
        [onnx.numpy_helper.from_array(weights, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(helper.make_model(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
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
