"""Structured pruning, the algorithm: score heads, FFN neurons, layers and residual dimensions on training rows and
remove the least important ones physically (the `prune` stage, with its recovery, is `stages/prune.py`).

Importance is the first-order (Taylor) estimate of the loss change when a unit is removed, |sum over tokens of
activation x gradient|, accumulated per example: for a head this equals Michel et al.'s gradient of a head mask, for an
FFN neuron it is |a x dL/da|, for a layer it uses the layer's residual update. Every layer keeps the same number of
heads and FFN neurons so the result is a standard config that transformers' Auto class of its head reloads alone. Any
task head works (sequence, token, span): the loss whose gradient is scored is the task's own.
BERT/RoBERTa configs derive the head size as hidden / heads, so removing heads while keeping the head size shrinks the
hidden width to kept heads x head size (the residual dimensions kept are the most important ones); `--hidden` picks
another width (the head size then becomes hidden / kept heads, at most the original).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..console import tracked
from ..errors import LmcError
from ..models.families import require_family
from ..distributed import is_main_process
from .student import (check_one_shared_layer, evenly_spaced_layers, head_rows, kept_heads_per_layer, kept_kv_groups,
                      slice_model, slice_shared_layer, topk_sorted)

log = logging.getLogger("lmcompress")


@dataclass
class Importance:
    heads: torch.Tensor  # [L, A]
    head_dims: torch.Tensor  # [L, A*d] Q/K/V rows (= context dims)
    ffn: torch.Tensor  # [L, F]
    layers: torch.Tensor  # [L]
    hidden: torch.Tensor  # [H]
    layer_change: torch.Tensor  # [L]: sum over tokens of 1 - cos(layer input, layer output) (Minitron, ShortGPT)


def importance_scores(model, batches: Iterable[dict]) -> Importance:
    """Accumulate |sum_t activation x gradient| per example over `batches` (dicts with labels) -> Importance."""
    family = require_family(model.config, "prune", narrow=True)
    layers = family.pass_modules(model)  # ALBERT: its one shared layer, scored over every pass
    cfg = model.config
    n_layers, heads, width, ffn = len(layers), family.heads(cfg), family.width(cfg), family.ffn(cfg)
    acc = Importance(torch.zeros(n_layers, heads), torch.zeros(n_layers, heads * family.head_size(cfg)),
                     torch.zeros(n_layers, ffn), torch.zeros(n_layers), torch.zeros(width), torch.zeros(n_layers))
    seen: dict[tuple[str, int], list[Any]] = {}  # per module, what each of its calls saw in this batch

    def keep_input(kind: str, i: int):
        def hook(module, args):
            args[0].retain_grad()
            seen.setdefault((kind, i), []).append(args[0])
        return hook

    def keep_layer(i: int):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            h_out.retain_grad()
            seen.setdefault(("layer", i), []).append((h_in, h_out))
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(family.part(layer, family.attention_out).register_forward_pre_hook(keep_input("context", i)))
        handles.append(family.part(layer, family.ffn_out).register_forward_pre_hook(keep_input("ffn", i)))
        handles.append(layer.register_forward_hook(keep_layer(i), with_kwargs=True))
    model.eval()  # no dropout: the same rows give the same scores, so a resumed prune rebuilds the same model
    try:
        for batch in tracked(batches, "importance (activation x gradient)", show=is_main_process()):
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            with torch.no_grad():  # else every sum below keeps this batch's activations alive in a growing graph
                _accumulate(acc, seen, batch["attention_mask"].unsqueeze(-1).float(), heads)
            seen.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        seen.clear()
    return acc


def _accumulate(acc: Importance, seen: dict[tuple[str, int], list[Any]], mask: torch.Tensor, heads: int) -> None:
    """Add one batch's |activation x gradient| sums (and the layers' 1 - cosine) to `acc`, over every call of each
    module (a shared ALBERT layer runs once per pass); `mask` is [B, T, 1]."""
    for i in range(len(acc.layers)):
        for ctx in seen[("context", i)]:  # [B, T, A*d]
            per_dim = (ctx * ctx.grad * mask).sum(1)  # [B, A*d]
            acc.head_dims[i] += per_dim.abs().sum(0)
            acc.heads[i] += per_dim.view(len(per_dim), heads, -1).sum(-1).abs().sum(0)  # [A]
        for act in seen[("ffn", i)]:  # [B, T, F]
            acc.ffn[i] += (act * act.grad * mask).sum(1).abs().sum(0)
        for h_in, h_out in seen[("layer", i)]:  # [B, T, H] each
            acc.layers[i] += ((h_out - h_in) * h_out.grad * mask).sum((1, 2)).abs().sum()
            cosine = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)  # [B, T]
            acc.layer_change[i] += ((1 - cosine) * mask.squeeze(-1)).sum()
            acc.hidden += (h_out * h_out.grad * mask).sum(1).abs().sum(0)


@dataclass
class PrunePlan:
    layers: int | None  # keep the N most important layers (None: all)
    heads: int  # per layer
    head_size: int
    hidden: int
    ffn: int  # per layer
    kv_heads: int | None = None  # grouped-query attention: KV heads kept per layer (None: no GQA)
    layer_score: str = "taylor"  # which Importance scores the layers: "taylor" (layers) or "cosine" (layer_change)


def plan(config, heads_ratio: float, ffn_ratio: float, layers: int | None, hidden: int | None,
         kv_heads_ratio: float = 0.0) -> PrunePlan:
    """Target sizes from the ratios, checked against the model (one-line errors)."""
    family = require_family(config, "prune", narrow=True)
    if family.shared_layer:
        check_one_shared_layer(config, "the model")
    n_layers, heads, width = family.depth(config), family.heads(config), family.width(config)
    head_size, kv = family.head_size(config), family.kv_heads(config)
    if layers is not None and layers > n_layers:
        raise LmcError(f"--layers {layers}: the model has only {n_layers} layers")
    if hidden is not None and hidden > width:
        raise LmcError(f"--hidden {hidden}: the model is only {width} wide")
    kept_ffn = max(1, round(family.ffn(config) * (1 - ffn_ratio)))
    if kv_heads_ratio and not family.kv_heads_key:
        raise LmcError(f"--kv-heads: {config.model_type} has no grouped-query attention; use --heads")
    if family.kv_heads_key and kv == heads:  # one query head per KV head: a head goes with its K and V
        kept_kv = kept_heads = max(1, round(heads * (1 - max(heads_ratio, kv_heads_ratio))))
    elif family.kv_heads_key:  # whole KV groups, and the same number of query heads inside each
        kept_kv = max(1, round(kv * (1 - kv_heads_ratio)))
        kept_heads = kept_kv * max(1, round(heads // kv * (1 - heads_ratio)))
    else:
        kept_kv, kept_heads = None, max(1, round(heads * (1 - heads_ratio)))
    if family.head_dim_key:  # the head size is a config key: heads and width are independent
        return PrunePlan(layers, kept_heads, head_size, hidden or width, kept_ffn, kept_kv)
    if hidden is None:
        return PrunePlan(layers, kept_heads, head_size, kept_heads * head_size, kept_ffn)
    if hidden % kept_heads or hidden // kept_heads > head_size:
        raise LmcError(f"--hidden {hidden} must be a multiple of the {kept_heads} kept heads with a head size of "
                       f"at most {head_size}")
    if family.rotary and hidden // kept_heads != head_size:
        raise LmcError(f"--hidden {hidden}: {config.model_type} rotates each head's dims in pairs (rotary "
                       f"positions), so heads stay whole: hidden = {kept_heads} kept heads x {head_size}")
    return PrunePlan(layers, kept_heads, hidden // kept_heads, hidden, kept_ffn)


def _kept_attention(family, cfg, scores: Importance, target: PrunePlan, keep_layers: list[int]):
    """Per kept layer: Q/K/V rows (Q rows only under grouped-query attention), K/V rows under GQA (else None), and
    the kept heads of the first layer (for a per-head parameter shared by every layer)."""
    head_size = family.head_size(cfg)
    if target.kv_heads is not None:
        groups = kept_kv_groups({layer: scores.heads[layer] for layer in keep_layers}, family.kv_heads(cfg),
                                target.kv_heads, target.heads)
        qkv_idx = {layer: head_rows(queries, head_size) for layer, (_, queries) in groups.items()}
        kv_idx = {layer: head_rows(kv, head_size) for layer, (kv, _) in groups.items()}
        return qkv_idx, kv_idx, torch.tensor(groups[keep_layers[0]][1])
    kept = kept_heads_per_layer(family, {layer: scores.heads[layer] for layer in keep_layers}, target.heads)
    qkv_idx = {}
    for layer in keep_layers:
        rows = []
        for head in kept[layer]:
            dims = scores.head_dims[layer, head * head_size:(head + 1) * head_size]  # [d]
            rows.append(topk_sorted(dims, target.head_size) + head * head_size)
        qkv_idx[layer] = torch.cat(rows)
    return qkv_idx, None, torch.tensor(kept[keep_layers[0]])


def prune_model(model, scores: Importance, target: PrunePlan):
    """Physically remove the least important units -> (a standard model of the same family, kept layer indices)."""
    cfg = model.config
    family = require_family(cfg, "prune", narrow=True)
    if family.shared_layer:
        return _prune_shared_layer(model, family, scores, target)
    layer_scores = scores.layer_change if target.layer_score == "cosine" else scores.layers
    keep_layers = topk_sorted(layer_scores, target.layers or len(layer_scores)).tolist()
    hidden_idx = topk_sorted(scores.hidden, target.hidden) if target.hidden < family.width(cfg) else None
    qkv_idx, kv_idx, head_idx = _kept_attention(family, cfg, scores, target, keep_layers)
    ffn_idx = {layer: topk_sorted(scores.ffn[layer], target.ffn) for layer in keep_layers}
    new_config = family.reshaped(cfg, keep_layers, target.hidden, target.heads, target.ffn, target.kv_heads)
    return slice_model(model, family, new_config, keep_layers, hidden_idx, qkv_idx, ffn_idx, head_idx,
                       kv_idx), keep_layers


def _prune_shared_layer(model, family, scores: Importance, target: PrunePlan):
    """ALBERT: its one shared layer pruned once for every pass (the scores summed over the passes); every pass is
    that layer, so depth is a count of passes (evenly spaced over the teacher's, for the hidden-state loss)."""
    cfg = model.config
    passes = evenly_spaced_layers(family.depth(cfg), target.layers or family.depth(cfg))
    hidden_idx = topk_sorted(scores.hidden, target.hidden) if target.hidden < family.width(cfg) else None
    qkv_idx, _, _ = _kept_attention(family, cfg, scores, target, [0])
    ffn_idx = topk_sorted(scores.ffn[0], target.ffn)
    return slice_shared_layer(model, family, passes, target, hidden_idx, qkv_idx[0], ffn_idx), passes
