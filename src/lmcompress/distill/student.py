"""Students derived from the teacher: `pick=0,2,4` / `layers=N`, optionally narrower `hidden=`, `heads=`, `ffn=`.

A SPEC is `;`-joined items, e.g. `layers=2;hidden=192`. Layers are copied from the teacher; narrower widths are
initialised by slicing the teacher's weights, keeping the highest-magnitude hidden dimensions, heads (and the
dimensions inside each head) and FFN neurons, so the student starts close to the teacher instead of at random.
Weight magnitude is the importance score here (no data needed); data-driven scores belong to `prune`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..errors import LmcError
from ..models.heads import head_class, saved_head

SPEC_KEYS = ("pick", "layers", "hidden", "heads", "ffn")
NARROWABLE = ("bert", "roberta")
# encoder.layer.3.… (BERT/RoBERTa and kin), transformer.h.3.… (GPT-2), model.layers.3.… (ModernBERT, Llama); base
# models (AutoModel, as distill-embeddings loads them) have no prefix: h.3.…, layers.3.…
LAYER_KEY = re.compile(r"^((?:.*?\.)?(?:layer|layers|h))\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class StudentSpec:
    pick: tuple[int, ...] | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None


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
                values[key] = int(raw)
        except ValueError:
            raise LmcError(f"student spec item '{part}': expected whole numbers") from None
    if "pick" in values and "layers" in values:
        raise LmcError("student spec: give pick= or layers=, not both")
    for key in ("layers", "hidden", "heads", "ffn"):
        if key in values and values[key] < 1:
            raise LmcError(f"student spec: {key} must be >= 1, got {values[key]}")
    return StudentSpec(**values)


def evenly_spaced_layers(teacher_layers: int, n: int) -> list[int]:
    """n of the teacher's layers, evenly spaced and always including the last (0-based)."""
    return [int((k + 1) * teacher_layers / n) - 1 for k in range(n)]


def layer_count(config) -> int:
    """Transformer layers of a BERT-style (num_hidden_layers) or GPT-2-style (n_layer) config."""
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def model_width(config) -> int:
    """Hidden width of a BERT-style (hidden_size) or GPT-2-style (n_embd) config."""
    return getattr(config, "hidden_size", None) or config.n_embd


def chosen_layers(spec: StudentSpec, teacher_layers: int) -> list[int]:
    if spec.pick is not None:
        bad = [i for i in spec.pick if not 0 <= i < teacher_layers]
        if bad or not spec.pick:
            raise LmcError(f"pick={','.join(map(str, spec.pick))}: the teacher has layers 0..{teacher_layers - 1}")
        if len(set(spec.pick)) != len(spec.pick):
            raise LmcError("pick= lists a layer twice")
        return list(spec.pick)
    n = spec.layers or teacher_layers
    if n > teacher_layers:
        raise LmcError(f"layers={n}: the teacher has only {teacher_layers} layers")
    return evenly_spaced_layers(teacher_layers, n)


# ------------------------------------------------------------------------------------------------ importance


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order (so slices keep the teacher's layout)."""
    return torch.sort(torch.topk(scores, k).indices).values


def _hidden_index(state: dict[str, torch.Tensor], width: int, keep: int) -> torch.Tensor:
    """Residual-stream dims to keep: mean |LayerNorm gain| across layers x word-embedding column norm."""
    gains = [v.abs() for k, v in state.items() if k.endswith("LayerNorm.weight") and v.numel() == width]
    embed = next(v for k, v in state.items() if k.endswith("word_embeddings.weight"))
    score = torch.stack(gains).mean(0) * embed.norm(dim=0)  # [H]
    return _topk_sorted(score, keep)


def _attention_index(state, prefix: str, heads: int, keep_heads: int, keep_dim: int) -> torch.Tensor:
    """Rows of Q/K/V (= columns of the attention output) to keep: best heads, best dims inside each."""
    q, k, v = (state[f"{prefix}.attention.self.{n}.weight"] for n in ("query", "key", "value"))  # [A*d, H]
    o = state[f"{prefix}.attention.output.dense.weight"]  # [H, A*d]
    d = q.shape[0] // heads
    row_score = q.norm(dim=1) * k.norm(dim=1) + v.norm(dim=1) * o.norm(dim=0)  # [A*d]
    head_score = (v.view(heads, d, -1).flatten(1).norm(dim=1) * o.view(o.shape[0], heads, d).transpose(0, 1)
                  .flatten(1).norm(dim=1))  # [A]
    rows = []
    for head in _topk_sorted(head_score, keep_heads).tolist():
        inside = _topk_sorted(row_score[head * d:(head + 1) * d], keep_dim) + head * d
        rows.append(inside)
    return torch.cat(rows)


def _ffn_index(state, prefix: str, keep: int) -> torch.Tensor:
    w_in = state[f"{prefix}.intermediate.dense.weight"]  # [F, H]
    w_out = state[f"{prefix}.output.dense.weight"]  # [H, F]
    return _topk_sorted(w_in.norm(dim=1) * w_out.norm(dim=0), keep)


def _axes(name: str) -> tuple[str | None, ...]:
    """What each axis of a BERT/RoBERTa parameter (task or MLM head included) indexes: 'hidden', 'qkv', 'ffn' or
    None (kept whole)."""
    rules = [
        (r"attention\.self\.(query|key|value)\.weight$", ("qkv", "hidden")),
        (r"attention\.self\.(query|key|value)\.bias$", ("qkv",)),
        (r"attention\.output\.dense\.weight$", ("hidden", "qkv")),
        (r"intermediate\.dense\.weight$", ("ffn", "hidden")),
        (r"intermediate\.dense\.bias$", ("ffn",)),
        (r"layer\.\d+\.output\.dense\.weight$", ("hidden", "ffn")),
        (r"(output\.dense|LayerNorm|pooler\.dense|classifier\.dense|transform\.dense|lm_head\.dense|lm_head\.layer_norm)"
         r"\.bias$", ("hidden",)),
        (r"(LayerNorm|lm_head\.layer_norm)\.weight$", ("hidden",)),
        (r"(word|position|token_type)_embeddings\.weight$", (None, "hidden")),
        (r"(pooler\.dense|classifier\.dense|predictions\.transform\.dense|lm_head\.dense)\.weight$",
         ("hidden", "hidden")),
        (r"(predictions|lm_head)\.decoder\.weight$", (None, "hidden")),  # MLM heads (tied to the embeddings)
        (r"(classifier|classifier\.out_proj|qa_outputs)\.weight$", (None, "hidden")),
    ]
    for pattern, axes in rules:
        if re.search(pattern, name):
            return axes
    return ()


# ------------------------------------------------------------------------------------------------ building


def build_student(teacher: PreTrainedModel, spec: StudentSpec) -> tuple[PreTrainedModel, list[int]]:
    """A student with the teacher's head, fewer layers and optionally narrower widths -> (student, teacher layers)."""
    config = teacher.config
    family = config.model_type
    n_teacher = layer_count(config)
    keep_layers = chosen_layers(spec, n_teacher)
    narrowing = any(x is not None for x in (spec.hidden, spec.heads, spec.ffn))
    if family == "albert":
        raise LmcError("an ALBERT teacher shares one layer across depth; derive students from BERT/RoBERTa/GPT-2 "
                       "teachers or give a preset student")
    if narrowing and family not in NARROWABLE:
        raise LmcError(f"hidden=/heads=/ffn= are supported for {', '.join(NARROWABLE)} teachers, not {family}")

    new_config = cut_layers_in_config(config, keep_layers)
    hidden_idx = qkv_idx = ffn_idx = None
    if narrowing:
        teacher_state = {k: v.detach() for k, v in teacher.state_dict().items()}
        width, heads, ffn = config.hidden_size, config.num_attention_heads, config.intermediate_size
        new_hidden = spec.hidden or width
        new_heads = spec.heads or heads
        new_ffn = spec.ffn or ffn
        if new_hidden > width or new_heads > heads or new_ffn > ffn:
            raise LmcError(f"a student cannot be wider than its teacher (hidden {width}, heads {heads}, ffn {ffn})")
        if new_hidden % new_heads:
            raise LmcError(f"hidden={new_hidden} is not divisible by {new_heads} heads; set heads= to a divisor")
        new_dim = new_hidden // new_heads
        if new_dim > width // heads:
            raise LmcError(f"hidden={new_hidden} with {new_heads} heads needs head size {new_dim} > the teacher's "
                           f"{width // heads}; keep more heads")
        new_config.hidden_size, new_config.num_attention_heads, new_config.intermediate_size = new_hidden, new_heads, new_ffn
        hidden_idx = _hidden_index(teacher_state, width, new_hidden)
        qkv_idx = {}
        ffn_idx = {}
        for layer in keep_layers:
            prefix = next(k for k in teacher_state if re.search(rf"\.layer\.{layer}\.", k)).split(f".layer.{layer}.")[0]
            prefix = f"{prefix}.layer.{layer}"
            qkv_idx[layer] = _attention_index(teacher_state, prefix, heads, new_heads, new_dim)
            ffn_idx[layer] = _ffn_index(teacher_state, prefix, new_ffn)

    student = slice_model(teacher, new_config, keep_layers, hidden_idx, qkv_idx, ffn_idx)
    return student, keep_layers


def cut_layers_in_config(config, keep_layers: list[int]):
    """A copy of `config` with only `keep_layers`: the layer count, and every per-layer list (ModernBERT's and
    Qwen2's `layer_types`), which transformers checks against the count."""
    new_config = copy.deepcopy(config)
    n_teacher = layer_count(config)
    setattr(new_config, "n_layer" if config.model_type == "gpt2" else "num_hidden_layers", len(keep_layers))
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == n_teacher and key.startswith("layer"):
            setattr(new_config, key, [value[i] for i in keep_layers])
    return new_config


def slice_model(teacher: PreTrainedModel, new_config, keep_layers: list[int], hidden_idx: torch.Tensor | None,
                qkv_idx: dict[int, torch.Tensor] | None, ffn_idx: dict[int, torch.Tensor] | None) -> PreTrainedModel:
    """A model of `new_config` holding the teacher's weights restricted to the kept layers and indices.

    hidden_idx: [H'] residual dims; qkv_idx[layer]: [A'*d'] Q/K/V rows; ffn_idx[layer]: [F'] neurons (None = all).
    """
    teacher_state = {k: v.detach() for k, v in teacher.state_dict().items()}
    student = type(teacher)(new_config)
    new_state = {}
    for name, target in student.state_dict().items():
        match = LAYER_KEY.match(name)
        teacher_layer = keep_layers[int(match.group(2))] if match else None
        source_name = f"{match.group(1)}.{teacher_layer}.{match.group(3)}" if match else name
        value = teacher_state[source_name]
        for axis, kind in enumerate(_axes(name)):
            per_layer = {"qkv": qkv_idx, "ffn": ffn_idx}.get(kind)
            index = hidden_idx if kind == "hidden" else (per_layer or {}).get(teacher_layer)
            if index is not None and value.shape[axis] != target.shape[axis]:
                value = value.index_select(axis, index)
        if value.shape != target.shape:
            raise LmcError(f"cannot derive {name}: teacher {tuple(value.shape)} vs student {tuple(target.shape)}")
        new_state[name] = value.clone()
    student.load_state_dict(new_state)
    return student


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
