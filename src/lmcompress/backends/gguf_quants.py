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


def _row_weights(x: np.ndarray, column_importance: np.ndarray | None, sigma2: np.ndarray | None = None) -> np.ndarray:
    """Each weight's count in the scale search: its square without importance (make_qx_quants' own rule), else its
    column's importance times sqrt(sigma^2 + w^2), sigma^2 the mean square of its row (llama.cpp; `sigma2` [rows, 1]
    when `x` is a slice of the rows)."""
    if column_importance is None:
        return x * x
    if sigma2 is None:
        sigma2 = (x * x).mean(-1, keepdims=True)  # per row, as llama.cpp: sum of x^2 over the row / its length
    return column_importance.astype(np.float32)[None, :] * np.sqrt(sigma2 + x * x)


def _search(blocks: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, 32] blocks and their weights -> (levels [n, 32], scale [n, 1]) by llama.cpp's search: of 19 scales around
    the one that puts the largest |value| on -8, the levels and least-squares scale with the least weighted error."""
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
    return levels, scale


def _pack(levels: np.ndarray, scale: np.ndarray, rows: int) -> np.ndarray:
    """levels [n, 32] in -8..7 and scales [n, 1] -> Q4_0 bytes [rows, n / rows * 18]: an fp16 scale, then 16 bytes
    of nibbles (values 0-15 low, 16-31 high)."""
    nibbles = (levels + LEVELS).astype(np.uint8).reshape(-1, 2, BLOCK // 2)
    packed = nibbles[:, 0, :] | (nibbles[:, 1, :] << np.uint8(4))
    d = scale.astype(np.float16).view(np.uint8)
    return np.concatenate([d, packed], axis=-1).reshape(rows, -1)


def quantize_q4_0(matrix: np.ndarray, column_importance: np.ndarray | None = None) -> np.ndarray:
    """A [rows, columns] float matrix -> its Q4_0 bytes [rows, columns / 32 * 18], levels and scales chosen by
    llama.cpp's weighted search. Without `column_importance` every weight counts by its square (make_qx_quants' own
    rule; llama.cpp itself rounds Q4_0 plainly then, as write_gguf does)."""
    x = matrix.astype(np.float32)
    weights = _row_weights(x, column_importance)
    levels, scale = _search(x.reshape(-1, BLOCK), weights.reshape(-1, BLOCK))
    return _pack(levels, scale, matrix.shape[0])


def quantize_q4_0_gptq(matrix: np.ndarray, moment: np.ndarray, damping: float = 0.01, chunk: int = 128) -> np.ndarray:
    """GPTQ (Frantar et al., 2023) on Q4_0's blocks: the columns are rounded in order, each on its block's scale
    (llama.cpp's importance search on the block's weights as updated so far, fixed when the block starts), and each
    column's rounding error is spread over the columns not yet rounded through the inverse of the inputs' second
    moment (`moment`: E[x x^T] over calibration tokens, [columns, columns]), so that the layer's outputs, not its
    weights, stay close. The bytes are plain Q4_0 [rows, columns / 32 * 18]."""
    rows, columns = matrix.shape
    if chunk % BLOCK or columns % BLOCK:
        raise ValueError(f"GPTQ rounds whole {BLOCK}-value blocks: chunk {chunk}, columns {columns}")
    weights = torch.tensor(matrix, dtype=torch.float64)
    hessian = torch.tensor(moment, dtype=torch.float64)
    dead = torch.diag(hessian) == 0  # a column no token reached: its weights never matter
    hessian[dead, dead], weights[:, dead] = 1.0, 0.0
    hessian += damping * torch.diag(hessian).mean() * torch.eye(columns, dtype=torch.float64)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    importance = np.diag(moment).astype(np.float32)
    sigma2 = (matrix.astype(np.float32) ** 2).mean(-1, keepdims=True)  # of the original whole rows
    levels = np.zeros((rows, columns), dtype=np.float32)
    scales = np.zeros((rows, columns // BLOCK), dtype=np.float32)
    for start in range(0, columns, chunk):  # chunk: a multiple of BLOCK, so a block never straddles two chunks
        end = min(start + chunk, columns)
        part, part_inverse = weights[:, start:end].clone(), inverse[start:end, start:end]
        errors = torch.zeros(rows, end - start, dtype=torch.float64)
        for i in range(end - start):
            column = start + i
            if column % BLOCK == 0:
                block = part[:, i:i + BLOCK].numpy().astype(np.float32)
                block_weights = _row_weights(block, importance[column:column + BLOCK], sigma2)
                scale = _search(block, block_weights)[1][:, 0].astype(np.float16).astype(np.float64)
                scales[:, column // BLOCK] = scale
                divisor = torch.tensor(np.where(scale == 0, 1.0, scale))
                zero = torch.tensor(scale == 0)
            level = torch.clamp(torch.round(part[:, i] / divisor), -LEVELS, LEVELS - 1).masked_fill(zero, 0.0)
            levels[:, column] = level.numpy()
            error = (part[:, i] - level * divisor.masked_fill(zero, 0.0)) / part_inverse[i, i]
            part[:, i:] -= error[:, None] * part_inverse[i, i:][None, :]
            errors[:, i] = error
        weights[:, end:] -= errors @ inverse[start:end, end:]
    return _pack(levels.reshape(-1, BLOCK), scales.reshape(-1, 1), rows)


@torch.inference_mode()
def column_importance(model, batches, full: bool = False) -> dict[str, np.ndarray]:
    """The mean square of each input column of every linear layer of `model` over the real tokens of `batches`
    (dicts holding input_ids and attention_mask; other keys are ignored) -> {weight name: [in_features]}:
    llama-imatrix's importance matrix; with `full`, the whole second moment E[x x^T] -> [in_features, in_features]
    (GPTQ's Hessian, up to a factor), whose diagonal is that importance."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor] = []

    def hook(name):
        def record(_module, inputs, _output):
            values = inputs[0][mask[0]].float()  # [real tokens, in_features]
            sums[name] = sums.get(name, 0) + (values.T @ values if full else (values * values).sum(0))
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
