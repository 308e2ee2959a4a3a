"""Architecture adapters: one `Family` per model family says where its parts live, so no other module reaches
into a model by a family-specific path or branches on `model_type`.

A family names, relative to its base model (`model.base_model`), the list of transformer layers; relative to one
layer, the attention projections (query, key, value, output) and the FFN input/output layers; the config keys of
depth, width, heads and FFN size; its language-model heads; and, for families whose students can be narrowed and
pruned, what each axis of each parameter indexes (hidden width, attention rows, FFN neurons). Adding an
architecture is adding an entry to FAMILIES (and its rows to the family test matrix).
"""

from __future__ import annotations

import copy
import operator
import re
from dataclasses import dataclass

from torch import nn

from ..errors import LmcError

# per parameter axis: "hidden", "qkv" (attention rows), "ffn", "heads", "qkv3" / "ffn2" (fused Q|K|V rows, GLU
# input|gate rows: the same index in each part) or None (kept whole)
Axes = tuple[str | None, ...]

# BERT-layout parameters (task and MLM heads included): what each axis indexes
BERT_AXES: tuple[tuple[str, Axes], ...] = (
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
    (r"(pooler\.dense|classifier\.dense|predictions\.transform\.dense|lm_head\.dense)\.weight$", ("hidden", "hidden")),
    (r"(predictions|lm_head)\.decoder\.weight$", (None, "hidden")),  # MLM heads (tied to the embeddings)
    (r"(classifier|classifier\.out_proj|qa_outputs)\.weight$", (None, "hidden")),
)
# ELECTRA: BERT's layout, plus a projection from narrower embeddings (embedding_size) up to the hidden width
ELECTRA_AXES = BERT_AXES + (
    (r"embeddings_project\.weight$", ("hidden", None)),
    (r"embeddings_project\.bias$", ("hidden",)),
)
# DeBERTa-v2/v3: BERT's layout with *_proj attention names, and the shared relative-position embeddings
DEBERTA_AXES = (
    (r"attention\.self\.(query_proj|key_proj|value_proj|pos_key_proj|pos_query_proj)\.weight$", ("qkv", "hidden")),
    (r"attention\.self\.(query_proj|key_proj|value_proj|pos_key_proj|pos_query_proj)\.bias$", ("qkv",)),
    (r"rel_embeddings\.weight$", (None, "hidden")),
) + BERT_AXES
# ALBERT: one layer shared by every pass (its hidden width reached from narrower embeddings through a projection);
# the embeddings, their LayerNorm and the MLM head's LayerNorm and decoder are embedding_size wide: kept whole
ALBERT_AXES: tuple[tuple[str, Axes], ...] = (
    (r"attention\.(query|key|value)\.weight$", ("qkv", "hidden")),
    (r"attention\.(query|key|value)\.bias$", ("qkv",)),
    (r"attention\.dense\.weight$", ("hidden", "qkv")),
    (r"albert_layers\.\d+\.ffn\.weight$", ("ffn", "hidden")),
    (r"albert_layers\.\d+\.ffn\.bias$", ("ffn",)),
    (r"ffn_output\.weight$", ("hidden", "ffn")),
    (r"(attention\.dense|ffn_output|attention\.LayerNorm|full_layer_layer_norm|embedding_hidden_mapping_in|pooler)"
     r"\.bias$", ("hidden",)),
    (r"(attention\.LayerNorm|full_layer_layer_norm)\.weight$", ("hidden",)),
    (r"embedding_hidden_mapping_in\.weight$", ("hidden", None)),
    (r"pooler\.weight$", ("hidden", "hidden")),
    (r"(predictions\.dense|classifier|qa_outputs)\.weight$", (None, "hidden")),  # (sop_classifier.classifier too)
)
# MPNet: q/k/v/o under attention.attn, and one relative-position bias per head shared by every layer (so every
# layer keeps the same heads: `uniform_heads`)
MPNET_AXES = (
    (r"attention\.attn\.(q|k|v)\.weight$", ("qkv", "hidden")),
    (r"attention\.attn\.(q|k|v)\.bias$", ("qkv",)),
    (r"attention\.attn\.o\.weight$", ("hidden", "qkv")),
    (r"attention\.attn\.o\.bias$", ("hidden",)),
    (r"relative_attention_bias\.weight$", (None, "heads")),
) + BERT_AXES
# ModernBERT: Q, K and V fused in one Wqkv, the GLU's input and gate fused in one Wi, bias-free norms
MODERNBERT_AXES: tuple[tuple[str, Axes], ...] = (
    (r"attn\.Wqkv\.weight$", ("qkv3", "hidden")),
    (r"attn\.Wqkv\.bias$", ("qkv3",)),
    (r"attn\.Wo\.weight$", ("hidden", "qkv")),
    (r"mlp\.Wi\.weight$", ("ffn2", "hidden")),
    (r"mlp\.Wi\.bias$", ("ffn2",)),
    (r"mlp\.Wo\.weight$", ("hidden", "ffn")),
    (r"(attn\.Wo|mlp\.Wo|norm|head\.dense)\.bias$", ("hidden",)),
    (r"norm\.weight$", ("hidden",)),
    (r"tok_embeddings\.weight$", (None, "hidden")),
    (r"head\.dense\.weight$", ("hidden", "hidden")),
    (r"(classifier|decoder)\.weight$", (None, "hidden")),
)
# Llama family (Llama, SmolLM2, Qwen2/3, Mistral): grouped-query attention, so K and V rows ("kv") index the kept KV
# heads and Q rows ("qkv") the query heads kept inside them; a gated FFN in separate gate/up projections; RMS norms
# without bias; Qwen3's per-head q_norm/k_norm span one head and stay whole
LLAMA_AXES: tuple[tuple[str, Axes], ...] = (
    (r"self_attn\.q_proj\.weight$", ("qkv", "hidden")),
    (r"self_attn\.q_proj\.bias$", ("qkv",)),
    (r"self_attn\.(k_proj|v_proj)\.weight$", ("kv", "hidden")),
    (r"self_attn\.(k_proj|v_proj)\.bias$", ("kv",)),
    (r"self_attn\.o_proj\.weight$", ("hidden", "qkv")),
    (r"mlp\.(gate_proj|up_proj)\.weight$", ("ffn", "hidden")),
    (r"mlp\.(gate_proj|up_proj)\.bias$", ("ffn",)),  # (mlp_bias / attention_bias configs)
    (r"mlp\.down_proj\.weight$", ("hidden", "ffn")),
    (r"(self_attn\.o_proj|mlp\.down_proj)\.bias$", ("hidden",)),
    (r"(q_norm|k_norm)\.weight$", ()),
    (r"norm\.weight$", ("hidden",)),
    (r"embed_tokens\.weight$", (None, "hidden")),
    (r"(lm_head|score|classifier|qa_outputs)\.weight$", (None, "hidden")),
)
# GPT-2: Conv1D layers store weights as [in, out] (the transpose of nn.Linear), Q|K|V fused in c_attn
GPT2_AXES: tuple[tuple[str, Axes], ...] = (
    (r"attn\.c_attn\.weight$", ("hidden", "qkv3")),
    (r"attn\.c_attn\.bias$", ("qkv3",)),
    (r"attn\.c_proj\.weight$", ("qkv", "hidden")),
    (r"mlp\.c_fc\.weight$", ("hidden", "ffn")),
    (r"mlp\.c_fc\.bias$", ("ffn",)),
    (r"mlp\.c_proj\.weight$", ("ffn", "hidden")),
    (r"(c_proj|ln_\w+)\.bias$", ("hidden",)),
    (r"ln_\w+\.weight$", ("hidden",)),
    (r"(wte|wpe)\.weight$", (None, "hidden")),
    (r"(lm_head|score|classifier|qa_outputs)\.weight$", (None, "hidden")),
)
DISTILBERT_AXES: tuple[tuple[str, Axes], ...] = (
    (r"attention\.(q_lin|k_lin|v_lin)\.weight$", ("qkv", "hidden")),
    (r"attention\.(q_lin|k_lin|v_lin)\.bias$", ("qkv",)),
    (r"attention\.out_lin\.weight$", ("hidden", "qkv")),
    (r"ffn\.lin1\.weight$", ("ffn", "hidden")),
    (r"ffn\.lin1\.bias$", ("ffn",)),
    (r"ffn\.lin2\.weight$", ("hidden", "ffn")),
    (r"(out_lin|lin2|layer_norm|LayerNorm|pre_classifier|vocab_transform)\.bias$", ("hidden",)),
    (r"(layer_norm|LayerNorm)\.weight$", ("hidden",)),
    (r"(word|position)_embeddings\.weight$", (None, "hidden")),
    (r"(pre_classifier|vocab_transform)\.weight$", ("hidden", "hidden")),
    (r"(classifier|qa_outputs|vocab_projector)\.weight$", (None, "hidden")),
)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # transformers model_type values this adapter serves
    layers: str  # the layer list, relative to the base model
    query: str | None  # relative to a layer; None where the projections are fused
    key: str | None
    value: str | None
    attention_out: str
    ffn_in: str
    ffn_out: str
    depth_key: str = "num_hidden_layers"
    width_key: str = "hidden_size"
    heads_key: str = "num_attention_heads"
    ffn_key: str = "intermediate_size"
    norm: str = "LayerNorm"  # parameter names of the layer norms end with NORM<suffix>.weight
    word_embeddings: str = "word_embeddings"
    mlm_head: str | None = None  # attribute path of the MLM head (masked-LM objectives)
    pair_head: str | None = None  # of the sentence-pair head (NSP / SOP)
    # other config keys that follow the hidden width when they equal it (ELECTRA's embedding_size, DeBERTa's
    # pooler_hidden_size): else a narrowed student would grow a projection, or keep a head, the teacher lacks
    width_followers: tuple[str, ...] = ()
    shares_layers: bool = False  # ALBERT: one layer reused across depth, so layers cannot be picked
    shared_layer: str | None = None  # that layer, relative to the base model (narrowed and pruned once for every pass)
    uniform_heads: bool = False  # a per-head parameter shared by the layers (MPNet): every layer keeps the same heads
    fused_qkv: str | None = None  # one Q|K|V projection (ModernBERT's attn.Wqkv), relative to a layer
    glu: bool = False  # ffn_in holds the input and the gate rows (2F): neurons are kept in both halves
    rotary: bool = False  # rotary positions pair the dims of a head: heads are kept whole (same head size)
    conv1d: bool = False  # GPT-2's Conv1D: weights stored [in, out]
    ffn_gate: str | None = None  # a gated FFN's separate gate projection (Llama's mlp.gate_proj), relative to a layer
    kv_heads_key: str | None = None  # grouped-query attention: the config key of the KV heads
    head_dim_key: str | None = None  # a config key that fixes the head size (else it is width / heads)
    axes_rules: tuple[tuple[str, Axes], ...] = ()  # non-empty: students can be narrowed and models pruned

    @property
    def can_narrow(self) -> bool:
        return bool(self.axes_rules)

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.layers)(model.base_model)

    def pass_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules that run once per layer pass: the layers, or ALBERT's one shared layer (run every pass)."""
        if self.shared_layer:
            return [operator.attrgetter(self.shared_layer)(model.base_model)]
        return list(self.layer_list(model))

    def part(self, layer: nn.Module, path: str) -> nn.Module:
        return operator.attrgetter(path)(layer)

    def weight(self, state: dict, prefix: str, part: str):
        """The weight of `part` of the layer at `prefix` as [out, in], whatever the layout it is stored in."""
        value = state[f"{prefix}.{part}.weight"]
        return value.t() if self.conv1d else value

    def qkv_weights(self, state: dict, prefix: str) -> tuple:
        """(Q, K, V) weights [A*d, H] ([K*d, H] for K and V under grouped-query attention) of the layer at `prefix`
        in a state dict (split when fused)."""
        if self.fused_qkv:
            return tuple(self.weight(state, prefix, self.fused_qkv).chunk(3, dim=0))
        return tuple(self.weight(state, prefix, part) for part in (self.query, self.key, self.value))

    def depth(self, config) -> int:
        return getattr(config, self.depth_key)

    def width(self, config) -> int:
        return getattr(config, self.width_key)

    def heads(self, config) -> int:
        return getattr(config, self.heads_key)

    def ffn(self, config) -> int:
        return getattr(config, self.ffn_key) or 4 * self.width(config)  # GPT-2's n_inner None means 4 x width

    def kv_heads(self, config) -> int:
        """KV heads (grouped-query attention), else the attention heads."""
        return (getattr(config, self.kv_heads_key, None) if self.kv_heads_key else None) or self.heads(config)

    def head_size(self, config) -> int:
        fixed = getattr(config, self.head_dim_key, None) if self.head_dim_key else None
        return fixed or self.width(config) // self.heads(config)

    def reshaped(self, config, layers: list[int] | None = None, hidden: int | None = None, heads: int | None = None,
                 ffn: int | None = None, kv_heads: int | None = None):
        """A copy of `config` with only the teacher layers `layers` (the count, and every per-layer list, such as
        ModernBERT's and Qwen2's `layer_types`, which transformers checks against it) and the widths given. Where a
        config key fixes the head size, it is written out, so a narrower width keeps the teacher's head size."""
        new = copy.deepcopy(config)
        if self.head_dim_key:
            setattr(new, self.head_dim_key, self.head_size(config))
        if layers is not None:
            n = self.depth(config)
            setattr(new, self.depth_key, len(layers))
            for key, value in config.to_dict().items():
                if isinstance(value, list) and len(value) == n and key.startswith("layer"):
                    setattr(new, key, [value[i] for i in layers])
        for key in self.width_followers if hidden is not None else ():
            if getattr(config, key, None) == self.width(config):
                setattr(new, key, hidden)
        for key, value in ((self.width_key, hidden), (self.heads_key, heads), (self.ffn_key, ffn),
                           (self.kv_heads_key, kv_heads)):
            if key and value is not None:
                setattr(new, key, value)
        return new

    def axes(self, parameter: str) -> Axes:
        """What each axis of a parameter indexes (empty: kept whole)."""
        for pattern, axes in self.axes_rules:
            if re.search(pattern, parameter):
                return axes
        return ()


_BERT_LAYER = dict(layers="encoder.layer", query="attention.self.query", key="attention.self.key",
                   value="attention.self.value", attention_out="attention.output.dense", ffn_in="intermediate.dense",
                   ffn_out="output.dense")

FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), **_BERT_LAYER, mlm_head="cls.predictions", pair_head="cls.seq_relationship",
           axes_rules=BERT_AXES),
    Family("roberta", ("roberta", "xlm-roberta", "camembert"), **_BERT_LAYER, mlm_head="lm_head", axes_rules=BERT_AXES),
    Family("electra", ("electra",), **_BERT_LAYER, width_followers=("embedding_size",),
           axes_rules=ELECTRA_AXES),
    Family("deberta-v2", ("deberta-v2",), layers="encoder.layer", query="attention.self.query_proj",
           key="attention.self.key_proj", value="attention.self.value_proj", attention_out="attention.output.dense",
           ffn_in="intermediate.dense", ffn_out="output.dense", width_followers=("pooler_hidden_size",),
           axes_rules=DEBERTA_AXES),
    Family("mpnet", ("mpnet",), layers="encoder.layer", query="attention.attn.q", key="attention.attn.k",
           value="attention.attn.v", attention_out="attention.attn.o", ffn_in="intermediate.dense",
           ffn_out="output.dense", axes_rules=MPNET_AXES, uniform_heads=True),
    Family("distilbert", ("distilbert",), layers="transformer.layer", query="attention.q_lin", key="attention.k_lin",
           value="attention.v_lin", attention_out="attention.out_lin", ffn_in="ffn.lin1", ffn_out="ffn.lin2",
           depth_key="n_layers", width_key="dim", heads_key="n_heads", ffn_key="hidden_dim", norm="layer_norm",
           axes_rules=DISTILBERT_AXES),
    Family("modernbert", ("modernbert",), layers="layers", query=None, key=None, value=None, attention_out="attn.Wo",
           ffn_in="mlp.Wi", ffn_out="mlp.Wo", norm="norm", word_embeddings="tok_embeddings", fused_qkv="attn.Wqkv",
           glu=True, rotary=True, axes_rules=MODERNBERT_AXES),
    Family("albert", ("albert",), layers="encoder.albert_layer_groups", query="attention.query", key="attention.key",
           value="attention.value", attention_out="attention.dense", ffn_in="ffn", ffn_out="ffn_output",
           norm="(?:LayerNorm|full_layer_layer_norm)", mlm_head="predictions", pair_head="sop_classifier",
           shares_layers=True,
           shared_layer="encoder.albert_layer_groups.0.albert_layers.0", axes_rules=ALBERT_AXES),
    Family("gpt2", ("gpt2",), layers="h", query=None, key=None, value=None, attention_out="attn.c_proj",
           ffn_in="mlp.c_fc", ffn_out="mlp.c_proj", depth_key="n_layer", width_key="n_embd", heads_key="n_head",
           ffn_key="n_inner", norm="ln_", word_embeddings="wte", fused_qkv="attn.c_attn", conv1d=True,
           axes_rules=GPT2_AXES),
    Family("llama", ("llama", "qwen2", "qwen3", "mistral"), layers="layers", query="self_attn.q_proj",
           key="self_attn.k_proj", value="self_attn.v_proj", attention_out="self_attn.o_proj", ffn_in="mlp.up_proj",
           ffn_out="mlp.down_proj", norm="layernorm", word_embeddings="embed_tokens", rotary=True,
           ffn_gate="mlp.gate_proj", kv_heads_key="num_key_value_heads", head_dim_key="head_dim",
           axes_rules=LLAMA_AXES),
)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
ENCODER_FAMILIES = tuple(f.name for f in FAMILIES if f.mlm_head)  # with a masked-LM head for pre-training


def family_of(config) -> Family | None:
    """The adapter of a config's (or a model's) architecture; None for an architecture without one."""
    config = getattr(config, "config", config)
    return _BY_MODEL_TYPE.get(getattr(config, "model_type", ""))


def family_name(model_type: str) -> str:
    """The family a model_type belongs to (xlm-roberta -> roberta), or the model_type itself."""
    family = _BY_MODEL_TYPE.get(model_type)
    return family.name if family else model_type


# an architecture without an adapter: layers can still be picked by their parameter names (layer.N, layers.N, h.N)
GENERIC = Family("generic", (), layers="", query=None, key=None, value=None, attention_out="", ffn_in="", ffn_out="")


def require_family(config, operation: str, narrow: bool = False) -> Family:
    """The adapter of `config`'s architecture for `operation` ("prune", "hidden=/heads=/ffn="), or one line saying
    what this architecture can and cannot go through. Without `narrow`, an architecture without an adapter gets
    GENERIC (layers picked by parameter name)."""
    family = family_of(config)
    model_type = getattr(getattr(config, "config", config), "model_type", "?")
    if family is None and not narrow:
        return GENERIC
    if narrow and (family is None or not family.can_narrow):
        narrowable = ", ".join(f.name for f in FAMILIES if f.can_narrow)
        raise LmcError(f"{operation} is supported for {narrowable} models, not {model_type}; {model_type} can still "
                       "be fine-tuned, distilled into a student with fewer layers (layers=N) or a preset, and quantized")
    return family


OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")  # positions start after the padding index


def check_max_length(config, max_length: int, flag: str = "--max-length") -> None:
    """One line, before any work, when texts of `max_length` tokens would index past the model's position
    embeddings (an IndexError deep inside the forward pass otherwise)."""
    limit = getattr(config, "max_position_embeddings", None)  # GPT-2 maps its n_positions to this name
    rotary = any(hasattr(config, a) for a in ("rope_theta", "rope_scaling", "rope_parameters"))
    relative_only = getattr(config, "position_biased_input", True) is False  # DeBERTa-v2/v3: no position table
    if rotary or relative_only or not isinstance(limit, int) \
            or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return
    if getattr(config, "model_type", "") in OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    if max_length > limit:
        raise LmcError(f"{flag} {max_length}: this {config.model_type} model takes at most {limit} tokens per "
                       f"text (its position embeddings); pass {flag} {limit} or less")


def depth(config) -> int:
    """Transformer layers of any config (the family's key, else num_hidden_layers, which most configs map)."""
    family = family_of(config)
    return family.depth(config) if family else config.num_hidden_layers


def width(config) -> int:
    """Hidden width of any config (the family's key, else hidden_size)."""
    family = family_of(config)
    return family.width(config) if family else config.hidden_size


# family -> (MLM head, pair head): the pre-training heads transformers has for it
PRETRAINING_HEADS = {f.name: (f.mlm_head, f.pair_head) for f in FAMILIES if f.mlm_head}


def check_objective(family: str, objective: str, tokenizer=None) -> None:
    """Reject model/objective combinations transformers has no heads for, before any slow work."""
    if objective == "clm":
        if family in ENCODER_FAMILIES:
            raise LmcError(f"--objective clm needs a causal LM (a gpt2 preset or a GPT-2-style folder); {family} is "
                           "an encoder: use mlm, mlm+nsp or mlm+sop")
        return
    if family not in PRETRAINING_HEADS:
        raise LmcError(f"--objective {objective} needs an encoder ({', '.join(ENCODER_FAMILIES)}); {family} is not "
                       "one (use --objective clm for causal LMs)")
    if objective != "mlm" and PRETRAINING_HEADS[family][1] is None:
        raise LmcError(f"{family} has no sentence-pair head in transformers; use --objective mlm (RoBERTa's recipe)")
    if tokenizer is not None and tokenizer.mask_token_id is None:
        raise LmcError("the tokenizer has no mask token, so it cannot be used for masked-LM pre-training")
