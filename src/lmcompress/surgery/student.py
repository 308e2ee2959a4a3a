"""Students derived from the teacher: `pick=0,2,4` / `layers=N`, optionally narrower `hidden=`, `heads=`, `kv-heads=`
(grouped-query attention), `ffn=`.

A SPEC is `;`-joined items, e.g. `layers=2;hidden=192`. Layers are copied from the teacher; narrower widths are
initialised by slicing the teacher's weights, keeping the highest-magnitude hidden dimensions, heads (and the
dimensions inside each head) and FFN neurons, so the student starts close to the teacher instead of at random.
Weight magnitude is the importance score here (no data needed); data-driven scores belong to `prune`.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..errors import LmcError
from ..models.families import GENERIC, Family, depth, family_of, require_family, width
from ..models.heads import head_class, saved_head

SPEC_KEYS = ("pick", "layers", "hidden", "heads", "kv-heads", "ffn")
# encoder.layer.3.… (BERT/RoBERTa and kin), transformer.h.3.… (GPT-2), model.layers.3.… (ModernBERT, Llama); base
# models (AutoModel, as distill-embeddings loads them) have no prefix: h.3.…, layers.3.…
LAYER_KEY = re.compile(r"^((?:.*?\.)?(?:layer|layers|h))\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class StudentSpec:
    pick: tuple[int, ...] | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None  # grouped-query attention: KV heads kept whole, each with its query heads
    ffn: int | None = None


def donor_of(spec: str) -> tuple[str | None, str]:
    """`minilm-l3;layers=2` -> ("minilm-l3", "layers=2"): a derived spec whose first item is a model (a zoo name,
    folder or Hub id: a pre-trained donor) cuts that model instead of the teacher; (None, spec) otherwise."""
    first, _, rest = spec.partition(";")
    return (None, spec) if "=" in first else (first.strip(), rest)


def is_derived_spec(spec: str) -> bool:
    """`key=value` items (a typo in a key still lands in parse_spec, which names the valid keys)."""
    return "=" in spec and not Path(spec).exists()


def parse_spec(spec: str) -> StudentSpec:
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in SPEC_KEYS:
            raise LmcError(f"student spec item '{part}' is not one of {', '.join(k + '=' for k in SPEC_KEYS)}")
        try:
            if key == "pick":
                values[key] = tuple(int(x) for x in raw.split(",") if x.strip())
            else:
                values[key.replace("-", "_")] = int(raw)
        except ValueError:
            raise LmcError(f"student spec item '{part}': expected whole numbers") from None
    if "pick" in values and "layers" in values:
        raise LmcError("student spec: give pick= or layers=, not both")
    for key in ("layers", "hidden", "heads", "kv_heads", "ffn"):
        if key in values and values[key] < 1:
            raise LmcError(f"student spec: {key} must be >= 1, got {values[key]}")
    return StudentSpec(**values)


def evenly_spaced_layers(teacher_layers: int, n: int) -> list[int]:
    """n of the teacher's layers, evenly spaced and always including the last (0-based)."""
    return [int((k + 1) * teacher_layers / n) - 1 for k in range(n)]


def layer_count(config) -> int:
    """Transformer layers of any config."""
    return depth(config)


def model_width(config) -> int:
    """Hidden width of any config."""
    return width(config)


def chosen_layers(spec: StudentSpec, teacher_layers: int, source: str = "the teacher") -> list[int]:
    if spec.pick is not None:
        bad = [i for i in spec.pick if not 0 <= i < teacher_layers]
        if bad or not spec.pick:
            raise LmcError(f"pick={','.join(map(str, spec.pick))}: {source} has layers 0..{teacher_layers - 1}")
        if len(set(spec.pick)) != len(spec.pick):
            raise LmcError("pick= lists a layer twice")
        return list(spec.pick)
    n = spec.layers or teacher_layers
    if n > teacher_layers:
        raise LmcError(f"layers={n}: {source} has only {teacher_layers} layers")
    return evenly_spaced_layers(teacher_layers, n)


# ------------------------------------------------------------------------------------------------ importance


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order (so slices keep the teacher's layout)."""
    return torch.sort(torch.topk(scores, k).indices).values


def _hidden_index(family: Family, state: dict[str, torch.Tensor], hidden: int, keep: int) -> torch.Tensor:
    """Residual-stream dims to keep: mean |layer-norm gain| across layers x word-embedding column norm."""
    norm = re.compile(rf"{family.norm}\w*\.weight$")  # LayerNorm.weight, input_layernorm.weight, ln_1.weight
    # only tensors on the residual stream (ALBERT's and ELECTRA's embeddings reach it through a projection)
    gains = [v.abs() for k, v in state.items() if norm.search(k) and v.numel() == hidden and "hidden" in family.axes(k)]
    embed = next(v for k, v in state.items() if k.endswith(f"{family.word_embeddings}.weight"))
    score = torch.stack(gains).mean(0)  # [H]
    if embed.shape[1] == hidden and "hidden" in family.axes(f"{family.word_embeddings}.weight"):
        score = score * embed.norm(dim=0)
    return topk_sorted(score, keep)


def _head_scores(family: Family, state, prefix: str, heads: int) -> torch.Tensor:
    """[A]: |V rows| x |O columns| of each head (|Q rows| x |O columns| under grouped-query attention, where V
    rows belong to a KV head shared by several query heads)."""
    q, _, v = family.qkv_weights(state, prefix)
    o = family.weight(state, prefix, family.attention_out)
    d = q.shape[0] // heads
    rows = v if v.shape[0] == q.shape[0] else q
    return rows.view(heads, d, -1).flatten(1).norm(dim=1) * o.view(o.shape[0], heads, d).transpose(0, 1).flatten(1).norm(dim=1)


def head_rows(heads: list[int], head_size: int) -> torch.Tensor:
    """Q/K/V rows of whole heads."""
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads])


def _attention_index(family: Family, state, prefix: str, kept_heads: list[int], heads: int,
                     keep_dim: int) -> torch.Tensor:
    """Rows of Q/K/V (= columns of the attention output) to keep: the kept heads, the best dims inside each."""
    q, k, v = family.qkv_weights(state, prefix)  # [A*d, H] each
    d = q.shape[0] // heads
    if keep_dim == d:
        return head_rows(kept_heads, d)
    o = family.weight(state, prefix, family.attention_out)  # [H, A*d]
    row_score = q.norm(dim=1) * k.norm(dim=1) + v.norm(dim=1) * o.norm(dim=0)  # [A*d]
    return torch.cat([topk_sorted(row_score[h * d:(h + 1) * d], keep_dim) + h * d for h in kept_heads])


def kept_heads_per_layer(family: Family, scores: dict[int, torch.Tensor], keep: int) -> dict[int, list[int]]:
    """Teacher layer -> its `keep` best heads by `scores[layer]` [A]; one set for all layers (summed scores) when
    the family shares a per-head parameter across layers."""
    if family.uniform_heads:
        shared = topk_sorted(torch.stack(list(scores.values())).sum(0), keep).tolist()
        return {layer: shared for layer in scores}
    return {layer: topk_sorted(score, keep).tolist() for layer, score in scores.items()}


def kept_kv_groups(scores: dict[int, torch.Tensor], kv_heads: int, keep_kv: int,
                   keep: int) -> dict[int, tuple[list[int], list[int]]]:
    """Grouped-query attention: teacher layer -> (kept KV heads, kept query heads). A KV head goes whole with its
    group of query heads, so the groups with the highest summed query-head scores stay, and inside each the
    `keep // keep_kv` best query heads (the same number per group, as the config requires)."""
    kept = {}
    for layer, score in scores.items():  # [A]
        groups = score.view(kv_heads, -1)  # [K, A/K]
        kv = topk_sorted(groups.sum(1), keep_kv).tolist()
        size = groups.shape[1]
        queries = [g * size + i for g in kv for i in topk_sorted(groups[g], keep // keep_kv).tolist()]
        kept[layer] = (kv, queries)
    return kept


def _ffn_index(family: Family, state, prefix: str, keep: int) -> torch.Tensor:
    w_in = family.weight(state, prefix, family.ffn_in)  # [F, H] ([2F, H]: input and gate rows for a GLU)
    w_out = family.weight(state, prefix, family.ffn_out)  # [H, F]
    score = w_in.norm(dim=1)
    if family.glu:
        inputs, gates = score.chunk(2)
        score = inputs * gates
    if family.ffn_gate:
        score = score * family.weight(state, prefix, family.ffn_gate).norm(dim=1)
    return topk_sorted(score * w_out.norm(dim=0), keep)


# ------------------------------------------------------------------------------------------------ building


@dataclass(frozen=True)
class Widths:
    """A narrowed student's widths: hidden, query heads, KV heads (= heads without grouped-query attention), head
    size and FFN neurons per layer."""
    hidden: int
    heads: int
    kv_heads: int
    head_size: int
    ffn: int


def _kv_heads_for(heads: int, kv: int, group: int) -> int | None:
    """The most KV heads (at most `kv`) that `heads` query heads divide into groups of at most `group` each."""
    return next((k for k in range(min(kv, heads), 0, -1) if heads % k == 0 and heads // k <= group), None)


def narrowed_widths(family: Family, config, spec: StudentSpec) -> Widths:
    """The widths `spec` asks for, checked against the teacher (one-line errors)."""
    hidden, heads, kv = family.width(config), family.heads(config), family.kv_heads(config)
    head_size, ffn, group = family.head_size(config), family.ffn(config), heads // family.kv_heads(config)
    new_hidden, new_ffn = spec.hidden or hidden, spec.ffn or ffn
    if family.kv_heads_key:  # KV heads kept whole, each with the same number of its own query heads
        new_kv = spec.kv_heads or (_kv_heads_for(spec.heads, kv, group) if spec.heads else kv) or kv
        new_heads = spec.heads or group * new_kv
    else:
        if spec.kv_heads is not None and spec.kv_heads != (spec.heads or heads):
            raise LmcError(f"{config.model_type} has no grouped-query attention: kv-heads must equal heads")
        new_heads = spec.heads or heads
        new_kv = new_heads
    if new_hidden > hidden or new_heads > heads or new_ffn > ffn or new_kv > kv:
        raise LmcError(f"a student cannot be wider than its teacher (hidden {hidden}, heads {heads}, kv-heads {kv}, "
                       f"ffn {ffn})")
    if new_heads % new_kv or new_heads // new_kv > group:
        raise LmcError(f"heads={new_heads} with kv-heads={new_kv}: each kept KV head serves the same number of "
                       f"query heads, at most the teacher's {group}")
    if family.head_dim_key:  # the head size is a config key: the width is free
        return Widths(new_hidden, new_heads, new_kv, head_size, new_ffn)
    if new_hidden % new_heads:
        raise LmcError(f"hidden={new_hidden} is not divisible by {new_heads} heads; set heads= to a divisor")
    new_dim = new_hidden // new_heads
    if family.rotary and new_dim != head_size:
        raise LmcError(f"{config.model_type} rotates each head's dims in pairs (rotary positions): keep the "
                       f"head size {head_size}, hidden = heads x {head_size}")
    if new_dim > head_size:
        raise LmcError(f"hidden={new_hidden} with {new_heads} heads needs head size {new_dim} > the teacher's "
                       f"{head_size}; keep more heads")
    return Widths(new_hidden, new_heads, new_heads, new_dim, new_ffn)


def build_student(teacher: PreTrainedModel, spec: StudentSpec,
                  source: str = "the teacher") -> tuple[PreTrainedModel, list[int]]:
    """A student with the teacher's head, fewer layers and optionally narrower widths -> (student, teacher layers).
    `source` names the model cut in messages (a donor is cut the same way)."""
    narrowing = any(x is not None for x in (spec.hidden, spec.heads, spec.kv_heads, spec.ffn))
    if (family_of(teacher.config) or GENERIC).shares_layers:
        return shared_layer_cut(teacher, spec, narrowing, source)
    family = require_family(teacher.config, "hidden=/heads=/ffn=", narrow=narrowing)
    keep_layers = chosen_layers(spec, family.depth(teacher.config), source)
    if not narrowing:
        return slice_model(teacher, family, family.reshaped(teacher.config, keep_layers), keep_layers, None, None,
                           None), keep_layers
    config = teacher.config
    target = narrowed_widths(family, config, spec)
    heads, kv, head_size = family.heads(config), family.kv_heads(config), family.head_size(config)
    state = {k: v.detach() for k, v in teacher.state_dict().items()}
    prefixes = {layer: layer_prefix(state, layer) for layer in keep_layers}
    scores = {layer: _head_scores(family, state, prefixes[layer], heads) for layer in keep_layers}
    if family.kv_heads_key:
        groups = kept_kv_groups(scores, kv, target.kv_heads, target.heads)
        kept = {layer: queries for layer, (_, queries) in groups.items()}
        kv_idx = {layer: head_rows(kv_heads, head_size) for layer, (kv_heads, _) in groups.items()}
    else:
        kept, kv_idx = kept_heads_per_layer(family, scores, target.heads), None
    qkv_idx = {layer: _attention_index(family, state, prefixes[layer], kept[layer], heads, target.head_size)
               for layer in keep_layers}
    ffn_idx = {layer: _ffn_index(family, state, prefixes[layer], target.ffn) for layer in keep_layers}
    new_config = family.reshaped(config, keep_layers, target.hidden, target.heads, target.ffn, target.kv_heads)
    hidden_idx = _hidden_index(family, state, family.width(config), target.hidden)
    student = slice_model(teacher, family, new_config, keep_layers, hidden_idx, qkv_idx, ffn_idx,
                          torch.tensor(kept[keep_layers[0]]), kv_idx)
    return student, keep_layers


def shared_layer_cut(teacher: PreTrainedModel, spec: StudentSpec, narrowing: bool,
                     source: str) -> tuple[PreTrainedModel, list[int]]:
    """An ALBERT model cut to `layers=N`: the same shared layer applied N times instead of the teacher's count, so
    only the compute shrinks; narrowed (`hidden=`, `heads=`, `ffn=`), the shared layer is sliced once for every pass
    -> (student, the teacher passes its passes are paired with)."""
    if spec.pick is not None:
        raise LmcError(f"an ALBERT model ({source}) shares one layer across depth: every pass is the same layer, so "
                       "pick= has nothing to choose; cut it with layers=N")
    check_one_shared_layer(teacher.config, source)
    family = family_of(teacher.config)
    keep_layers = chosen_layers(spec, family.depth(teacher.config), source)
    if not narrowing:
        student = type(teacher)(family.reshaped(teacher.config, keep_layers))
        student.load_state_dict(teacher.state_dict())
        return student, keep_layers
    config, target = teacher.config, narrowed_widths(family, teacher.config, spec)
    state = {k: v.detach() for k, v in teacher.state_dict().items()}
    query = f"{family.shared_layer}.{family.query}.weight"  # (a base model's names have no `albert.` prefix)
    prefix = next(k for k in state if k.endswith(query))[:-len(f".{family.query}.weight")]
    kept = topk_sorted(_head_scores(family, state, prefix, family.heads(config)), target.heads).tolist()
    qkv = _attention_index(family, state, prefix, kept, family.heads(config), target.head_size)
    ffn = _ffn_index(family, state, prefix, target.ffn)
    hidden_idx = _hidden_index(family, state, family.width(config), target.hidden)
    return slice_shared_layer(teacher, family, keep_layers, target, hidden_idx, qkv, ffn), keep_layers


def slice_shared_layer(model: PreTrainedModel, family: Family, passes: list[int], widths, hidden_idx, qkv_idx,
                       ffn_idx) -> PreTrainedModel:
    """ALBERT with its one shared layer sliced to `widths` (hidden, heads, ffn) once for all `passes` (the teacher
    passes they stand for: their count is the depth)."""
    new_config = family.reshaped(model.config, passes, widths.hidden, widths.heads, widths.ffn)
    # the shared layer's parameter names carry no layer number (LAYER_KEY): its indices go under None
    return slice_model(model, family, new_config, [], hidden_idx, {None: qkv_idx}, {None: ffn_idx})


def check_one_shared_layer(config, source: str) -> None:
    """An ALBERT model can be cut, narrowed and pruned when one layer serves every pass: with several layer groups,
    fewer passes would change which group runs when, and inner layers would need indices of their own."""
    groups, inner = getattr(config, "num_hidden_groups", 1), getattr(config, "inner_group_num", 1)
    if groups != 1 or inner != 1:
        raise LmcError(f"{source} has {groups} ALBERT layer group(s) of {inner} layer(s); only a model with one "
                       "shared layer can be cut, narrowed or pruned")


def layer_prefix(state: dict[str, torch.Tensor], layer: int) -> str:
    """The parameter-name prefix of teacher layer `layer` (e.g. bert.encoder.layer.3)."""
    for name in state:
        match = LAYER_KEY.match(name)
        if match and int(match.group(2)) == layer:
            return f"{match.group(1)}.{layer}"
    raise LmcError(f"no parameters of layer {layer} found")


def slice_model(teacher: PreTrainedModel, family: Family, new_config, keep_layers: list[int],
                hidden_idx: torch.Tensor | None, qkv_idx: dict[int, torch.Tensor] | None,
                ffn_idx: dict[int, torch.Tensor] | None, head_idx: torch.Tensor | None = None,
                kv_idx: dict[int, torch.Tensor] | None = None) -> PreTrainedModel:
    """A model of `new_config` holding the teacher's weights restricted to the kept layers and indices.

    hidden_idx: [H'] residual dims; qkv_idx[layer]: [A'*d'] Q/K/V rows (Q rows only under grouped-query attention,
    where kv_idx[layer]: [K'*d] holds the K/V rows); ffn_idx[layer]: [F'] neurons; head_idx: [A'] heads of a per-head
    parameter shared by the layers (uniform_heads families). None = all.
    """
    teacher_state = {k: v.detach() for k, v in teacher.state_dict().items()}
    student = type(teacher)(new_config)
    new_state = {}
    for name, target in student.state_dict().items():
        match = LAYER_KEY.match(name)
        teacher_layer = keep_layers[int(match.group(2))] if match else None
        source_name = f"{match.group(1)}.{teacher_layer}.{match.group(3)}" if match else name
        value = teacher_state[source_name]
        for axis, kind in enumerate(family.axes(name)):
            index = _axis_index(kind, teacher_layer, hidden_idx, head_idx, qkv_idx, ffn_idx, kv_idx)
            if index is not None and value.shape[axis] != target.shape[axis]:
                parts = {"qkv3": 3, "ffn2": 2}.get(kind, 1)  # fused blocks: the same rows in each
                size = value.shape[axis] // parts
                value = value.index_select(axis, torch.cat([index + i * size for i in range(parts)]))
        if value.shape != target.shape:
            raise LmcError(f"cannot derive {name}: teacher {tuple(value.shape)} vs student {tuple(target.shape)}")
        new_state[name] = value.clone()
    student.load_state_dict(new_state)
    return student


def _axis_index(kind: str | None, teacher_layer: int | None, hidden_idx, head_idx, qkv_idx, ffn_idx, kv_idx):
    """The kept indices along an axis of `kind` (None: keep it whole)."""
    if kind in ("hidden", "heads"):
        return hidden_idx if kind == "hidden" else head_idx
    per_layer = {"qkv": qkv_idx, "qkv3": qkv_idx, "ffn": ffn_idx, "ffn2": ffn_idx, "kv": kv_idx}.get(kind) or {}
    return per_layer.get(teacher_layer)


def default_layer_map(student_layers: list[int] | None, n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer (1-based hidden-state index) for each student layer: the copied ones, else uniform."""
    if student_layers is not None:
        return [i + 1 for i in student_layers]
    return [round((i + 1) * n_teacher / n_student) for i in range(n_student)]


def load_student_like(teacher: PreTrainedModel, folder) -> PreTrainedModel:
    """A student checkpoint (dir) with the teacher's head labels (per sequence or per token, as the teacher)."""
    return head_class(saved_head(teacher.config)).from_pretrained(
        str(folder), num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
        label2id=teacher.config.label2id, problem_type=teacher.config.problem_type, ignore_mismatched_sizes=True,
        local_files_only=True)
