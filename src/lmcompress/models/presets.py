"""Architecture presets for the four families: `{family}-{L}l-{H}h[-{A}a]`, e.g. bert-4l-312h, gpt2-6l-768h-12a.

FFN width is 4H; heads default to 12 for TinyBERT's 312 and H/64 otherwise (at least 2). ALBERT presets use a
128-wide factorised embedding (or H when H < 128).
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass

from transformers import AlbertConfig, BertConfig, GPT2Config, PretrainedConfig, RobertaConfig

from ..errors import LmcError

FAMILIES = ("bert", "roberta", "albert", "gpt2")
PRESET_RE = re.compile(r"^(bert|roberta|albert|gpt2)-(\d+)l-(\d+)h(?:-(\d+)a)?$")
# Named sizes shown by `lmcompress zoo`; any L/H combination that parses is accepted too.
STANDARD = ("2l-128h", "4l-256h", "4l-312h", "4l-512h", "6l-384h", "6l-768h", "8l-512h", "12l-768h")


@dataclass(frozen=True)
class Preset:
    family: str
    layers: int
    hidden: int
    heads: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.layers}l-{self.hidden}h-{self.heads}a"


def names_preset(spec: str) -> bool:
    """Whether a model spec is a preset architecture name (and not also an existing path, which wins)."""
    return parse_preset(spec) is not None and not Path(spec).exists()


def parse_preset(name: str) -> Preset | None:
    match = PRESET_RE.match(name.lower())
    if match is None:
        return None
    family, layers, hidden, heads = match.groups()
    layers, hidden = int(layers), int(hidden)
    heads = int(heads) if heads else (12 if hidden == 312 else max(2, hidden // 64))
    if layers < 1 or hidden < 2 or heads < 1:
        raise LmcError(f"preset {name}: layers, hidden size and heads must be positive")
    if hidden % heads:
        raise LmcError(f"preset {name}: hidden size {hidden} is not divisible by {heads} heads (add -{{A}}a)")
    return Preset(family, layers, hidden, heads)


def build_config(preset: Preset, vocab_size: int, pad_token_id: int | None, bos_token_id: int | None,
                 eos_token_id: int | None) -> PretrainedConfig:
    """A fresh transformers config for the preset, sized to the tokenizer's vocabulary."""
    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id)
    h, layers, heads = preset.hidden, preset.layers, preset.heads
    if preset.family == "bert":
        return BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * h,
                          **common)
    if preset.family == "roberta":
        # RoBERTa positions start after the padding index, hence 512 + 2 position rows.
        return RobertaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * h, max_position_embeddings=514, bos_token_id=bos_token_id,
                             eos_token_id=eos_token_id, **common)
    if preset.family == "albert":
        return AlbertConfig(embedding_size=min(128, h), hidden_size=h, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * h, bos_token_id=bos_token_id,
                            eos_token_id=eos_token_id, **common)
    return GPT2Config(n_embd=h, n_layer=layers, n_head=heads, n_positions=1024, bos_token_id=bos_token_id,
                      eos_token_id=eos_token_id, **common)
