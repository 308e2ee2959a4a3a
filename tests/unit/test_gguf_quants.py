"""Importance-weighted Q4_0 rounding (llama.cpp's imatrix search) and the importance matrix itself, on random
matrices and a tiny random Llama: valid Q4_0 bytes, never a larger weighted error than plain rounding, and the mean
squares of what reaches each linear layer counted over real tokens only."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmcompress.backends.gguf_quants import BLOCK, column_importance, quantize_q4_0, quantize_q4_0_gptq

Q4_0 = gguf.GGMLQuantizationType.Q4_0


def _matrix(rows: int = 48, columns: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights whose columns differ in scale, and importances spanning orders of magnitude, as in real layers."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((rows, columns)) * np.exp(rng.standard_normal((1, columns)))
    return weights.astype(np.float32), np.exp(2 * rng.standard_normal(columns)).astype(np.float32)


def _block_errors(matrix: np.ndarray, packed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted squared error of each 32-value block after a round trip through gguf's own Q4_0 reader."""
    restored = gguf.quants.dequantize(packed, Q4_0)
    return ((restored - matrix) ** 2 * weights).reshape(-1, BLOCK).sum(-1)


def test_weighted_rounding_writes_q4_0_that_gguf_reads_on_its_16_levels():
    matrix, importance = _matrix()
    packed = quantize_q4_0(matrix, importance)
    plain = gguf.quants.quantize(matrix, Q4_0)
    assert packed.shape == plain.shape and packed.dtype == plain.dtype == np.uint8
    restored = gguf.quants.dequantize(packed, Q4_0).reshape(-1, BLOCK)
    scales = packed.reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)  # [blocks, 1]
    levels = restored / scales
    assert np.allclose(levels, np.round(levels), atol=1e-3) and levels.min() >= -8 and levels.max() <= 7
    zeros = quantize_q4_0(np.zeros((2, 64), np.float32), np.ones(64, np.float32))
    assert not gguf.quants.dequantize(zeros, Q4_0).any()


def _ggml_sums(x, weight, iscale) -> tuple[list[int], np.float32, np.float32]:
    """make_qx_quants' inner loop: levels at `iscale`, sum of w x l and of w l^2 (float32, value by value)."""
    f = np.float32
    levels = [int(max(-8, min(7, np.rint(iscale * v)))) for v in x]
    return (levels, f(sum(w * v * q for w, v, q in zip(weight, x, levels))),
            f(sum(w * q * q for w, q in zip(weight, levels))))


def _ggml_q4_0_row(row: np.ndarray, importance: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """ggml-quants.c's quantize_row_q4_0_impl with quant weights, transliterated value by value (float32)."""
    f = np.float32
    sigma2 = f(sum(f(v) * f(v) for v in row) / f(len(row)))
    scales, levels = [], []
    for start in range(0, len(row), 32):
        x, qw = row[start:start + 32].astype(f), importance[start:start + 32].astype(f)
        weight = [qw[j] * f(np.sqrt(sigma2 + x[j] * x[j])) for j in range(32)]
        largest = max(x, key=abs)
        best_l, sumlx, suml2 = _ggml_sums(x, weight, f(-8) / largest)
        scale = sumlx / suml2 if suml2 else f(0)
        best = scale * sumlx
        for step in range(-9, 10):
            if step:
                trial, sumlx, suml2 = _ggml_sums(x, weight, -(f(8) + f(0.1) * f(step)) / largest)
                if suml2 > 0 and sumlx * sumlx > best * suml2:
                    best_l, scale = trial, sumlx / suml2
                    best = scale * sumlx
        scales.append(float(scale))
        levels.append(best_l)
    return scales, levels


def test_the_search_is_ggml_quantize_row_q4_0_impl_value_for_value():
    matrix, importance = _matrix(rows=4, columns=128, seed=2)
    ours = gguf.quants.dequantize(quantize_q4_0(matrix, importance), Q4_0).reshape(-1)
    reference = np.concatenate([np.repeat(np.float16(scale).astype(np.float32), 32) * np.array(levels, np.float32)
                                for row in matrix for scale, levels in zip(*_ggml_q4_0_row(row, importance))])
    same = np.isclose(ours, reference, rtol=1e-6, atol=0)
    assert same.mean() >= 0.97, same.mean()  # float32 sums in another order may flip a near-tie block, no more


@pytest.mark.parametrize("with_importance", [True, False])
def test_no_block_is_rounded_worse_than_plain_q4_0_by_the_weights_the_search_minimises(with_importance):
    matrix, importance = _matrix(seed=1)
    if with_importance:  # llama.cpp: importance x sqrt(mean square of the row + w^2)
        weights = importance[None, :] * np.sqrt((matrix ** 2).mean(-1, keepdims=True) + matrix ** 2)
    else:  # llama.cpp's rule without an importance matrix: each weight by its square
        weights = matrix ** 2
    searched = _block_errors(matrix, quantize_q4_0(matrix, importance if with_importance else None), weights)
    plain = _block_errors(matrix, gguf.quants.quantize(matrix, Q4_0), weights)
    assert np.all(searched <= plain * (1 + 2e-3) + 1e-7)  # the fp16 scale may cost a hair
    assert searched.sum() < 0.9 * plain.sum()  # and it is a real gain, not a tie


def test_importance_is_the_mean_square_of_each_layers_input_over_real_tokens_only():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32,
                                         tie_word_embeddings=True)).eval()
    hooks_before = sum(len(module._forward_hooks) for module in model.modules())  # transformers keeps its own
    ids = torch.randint(1, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding: not counted
    importance = column_importance(model, [{"input_ids": ids, "attention_mask": mask}])
    assert sum(len(module._forward_hooks) for module in model.modules()) == hooks_before  # ours are removed
    linears = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears <= set(importance) and len(linears) == 2 * 7 + 1
    assert importance["model.layers.1.mlp.down_proj.weight"].shape == (48,)
    with torch.no_grad():
        final = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    expected = (final[mask.bool()] ** 2).mean(0).numpy()  # the output layer's input: the final normed states
    assert np.allclose(importance["lm_head.weight"], expected, rtol=1e-5)
    moments = column_importance(model, [{"input_ids": ids, "attention_mask": mask}], full=True)
    x = final[mask.bool()].numpy()
    assert np.allclose(moments["lm_head.weight"], x.T @ x / len(x), rtol=1e-4, atol=1e-6)  # E[x x^T]
    assert np.allclose(np.diag(moments["lm_head.weight"]), importance["lm_head.weight"], rtol=1e-5)


def _correlated_inputs(columns: int, tokens: int = 2048, seed: int = 1) -> np.ndarray:
    """Activations whose columns are correlated and differ in scale, as a layer's inputs are."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((columns, columns)) / np.sqrt(columns) + np.eye(columns)
    return (rng.standard_normal((tokens, columns)) @ mixing * np.exp(rng.standard_normal(columns))).astype(np.float32)


def test_gptq_keeps_the_layer_outputs_closer_than_the_importance_search_in_valid_q4_0():
    """GPTQ's bytes are Q4_0 on its 16 levels (gguf's reader restores level x scale), and on correlated inputs the
    layer's outputs move less than with the importance search alone, which rounds each weight on its own."""
    matrix, _ = _matrix(rows=64, columns=256)
    inputs = _correlated_inputs(256)
    moment = inputs.T @ inputs / len(inputs)
    packed = quantize_q4_0_gptq(matrix, moment)
    gptq = gguf.quants.dequantize(packed, Q4_0)
    search = gguf.quants.dequantize(quantize_q4_0(matrix, np.diag(moment).copy()), Q4_0)
    assert gptq.shape == matrix.shape
    scales = packed.reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)  # each block's fp16 scale
    levels = gptq.reshape(-1, BLOCK) / np.where(scales == 0, 1, scales)
    assert np.allclose(levels, np.round(levels), atol=1e-3) and levels.min() >= -8 and levels.max() <= 7

    def output_error(restored):
        return float((((restored - matrix) @ inputs.T) ** 2).mean())

    assert output_error(gptq) < 0.8 * output_error(search)
    dead = moment.copy()
    dead[:, :32] = dead[:32, :] = 0  # columns no token reached are written as zeros
    assert np.all(gguf.quants.dequantize(quantize_q4_0_gptq(matrix, dead), Q4_0)[:, :32] == 0)
