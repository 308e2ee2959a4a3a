"""Q4_0 blocks rounded to what the model computes with (llama.cpp's importance-matrix quantisation), in numpy.

Plain Q4_0 (the `gguf` package, llama-quantize without `--imatrix`) scales each block of 32 weights so that its
largest one lands on -8, and rounds every weight to the nearest of 16 levels. llama.cpp's `quantize_row_q4_0_impl`
with an importance matrix instead tries 19 scales around that one and keeps the scale and levels with the least
weighted squared error, each weight counted by how large its input column's activations are on calibration text
(`column_importance`: the mean square of what reaches that column) times sqrt(sigma^2 + w^2). The file format is the
same Q4_0 that llama.cpp and transformers read; only which levels were chosen differs.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32  # Q4_0 values per block, along a row
ZERO = 1e-15  # ggml's GROUP_MAX_EPS: a block whose largest |value| is below it is written as zeros
LEVELS = 8  # Q4_0 levels: -8 .. 7 (stored + 8 as a nibble)
SCALE_STEPS = [0.1 * step for step in range(-9, 10) if step]  # llama.cpp's make_qx_quants: iscale -(8 + 0.1 k)/max


def _levels(blocks: np.ndarray, inverse_scale: np.ndarray) -> np.ndarray:
    """Each value's level at `inverse_scale` (per block), rounded half to even like ggml's nearest_int."""
    return np.clip(np.rint(blocks * inverse_scale), -LEVELS, LEVELS - 1)


def _fit(blocks: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weighted least-squares scale of `levels` for `blocks` -> (scale, sum of w x l: scale x it is the error
    reduction the search maximises)."""
    sum_lx = (weights * blocks * levels).sum(-1, keepdims=True)
    sum_l2 = (weights * levels * levels).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(sum_l2 > 0, sum_lx / sum_l2, 0.0)
    return scale, sum_lx


def quantize_q4_0(matrix: np.ndarray, column_importance: np.ndarray | None = None) -> np.ndarray:
    """A [rows, columns] float matrix -> its Q4_0 bytes [rows, columns / 32 * 18] (an fp16 scale, then 16 bytes of
    nibbles: values 0-15 low, 16-31 high), levels and scales chosen by llama.cpp's weighted search. Without
    `column_importance` every weight counts by its square (make_qx_quants' own rule; llama.cpp itself rounds Q4_0
    plainly then, as write_gguf does)."""
    rows, columns = matrix.shape
    x = matrix.astype(np.float32)
    if column_importance is None:
        weights = x * x
    else:
        sigma2 = (x * x).mean(-1, keepdims=True)  # per row, as llama.cpp: sum of x^2 over the row / its length
        weights = column_importance.astype(np.float32)[None, :] * np.sqrt(sigma2 + x * x)
    blocks, weights = x.reshape(-1, BLOCK), weights.reshape(-1, BLOCK)
    largest = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[:, None], -1)  # signed, as ggml keeps it
    empty = np.abs(largest) < ZERO
    with np.errstate(divide="ignore", over="ignore"):
        base = np.where(empty, 0.0, -LEVELS / largest)
    levels = _levels(blocks, base)
    scale, sum_lx = _fit(blocks, weights, levels)
    best = scale * sum_lx
    for step in SCALE_STEPS:
        with np.errstate(divide="ignore", over="ignore"):
            trial = _levels(blocks, np.where(empty, 0.0, -(LEVELS + step) / largest))
        trial_scale, trial_lx = _fit(blocks, weights, trial)
        better = (trial_scale * trial_lx > best)[:, 0]
        levels[better], scale[better], best[better] = trial[better], trial_scale[better], (trial_scale * trial_lx)[better]
    nibbles = (levels + LEVELS).astype(np.uint8).reshape(-1, 2, BLOCK // 2)
    packed = nibbles[:, 0, :] | (nibbles[:, 1, :] << np.uint8(4))
    d = scale.astype(np.float16).view(np.uint8)
    return np.concatenate([d, packed], axis=-1).reshape(rows, -1)


@torch.inference_mode()
def column_importance(model, batches) -> dict[str, np.ndarray]:
    """The mean square of each input column of every linear layer of `model` over the real tokens of `batches`
    (dicts holding input_ids and attention_mask; other keys are ignored) -> {weight name: [in_features]}:
    llama-imatrix's importance matrix."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor] = []

    def hook(name):
        def record(_module, inputs, _output):
            values = inputs[0][mask[0]].float()  # [real tokens, in_features]
            sums[name] = sums.get(name, 0) + (values * values).sum(0)
            counts[name] = counts.get(name, 0) + values.shape[0]
        return record

    handles = [module.register_forward_hook(hook(f"{name}.weight")) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)]
    try:
        for batch in batches:
            mask[:] = [batch["attention_mask"].bool()]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).numpy() for name in sums}
