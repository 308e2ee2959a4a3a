"""A static-embedding classifier: a token-embedding table (model2vec's format), mean pooling, a linear head.

The run directory is a model2vec model that `model2vec.StaticModel.from_pretrained(dir)` loads as it is
(config.json with `"model_type": "model2vec"`, model.safetensors with `embeddings`, tokenizer.json), plus the head
in `classifier.safetensors` (`weight` [C, D], `bias` [C]) and its labels in `classifier.json`, and a
`tokenizer_config.json` so that `transformers.AutoTokenizer` reads the same tokenizer. Deployment without us:

    emb = StaticModel.from_pretrained(dir).encode(texts)   # [N, D] mean of token vectors
    logits = emb @ weight.T + bias
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import LmcError

HEAD_FILE = "classifier.safetensors"
HEAD_CONFIG = "classifier.json"


def is_static_dir(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


class StaticClassifier(nn.Module):
    """input_ids [B, T] -> mean of the table's rows over real tokens (padding and [UNK] left out, as model2vec
    encodes) -> a linear head -> logits [B, C] (regression: [B, 1])."""

    def __init__(self, table: torch.Tensor, num_labels: int, unk_id: int | None, head_config: dict[str, Any],
                 static_config: dict[str, Any], tokenizer_json: str):
        super().__init__()
        self.embeddings = nn.Embedding.from_pretrained(table.float(), freeze=False)
        self.classifier = nn.Linear(table.shape[1], num_labels)
        self.unk_id, self.head_config = unk_id, head_config
        self.static_config, self.tokenizer_json = static_config, tokenizer_json

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.unk_id is not None:
            mask = mask & (input_ids != self.unk_id)
        vectors = self.embeddings(input_ids) * mask.unsqueeze(-1)  # [B, T, D]
        return vectors.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # [B, D]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels=None,
                **unused: Any) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.classifier(self.pooled(input_ids, attention_mask)))

    def save_pretrained(self, folder: Path) -> None:
        """model2vec's files (table, tokenizer, config) plus the head."""
        folder = Path(folder)
        save_file({"embeddings": self.embeddings.weight.detach().float().contiguous()}, str(folder / "model.safetensors"))
        (folder / "tokenizer.json").write_text(self.tokenizer_json, encoding="utf-8")
        config = dict(self.static_config, model_type="model2vec", hidden_dim=self.embeddings.weight.shape[1],
                      normalize=False)
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        save_file({"weight": self.classifier.weight.detach().contiguous(),
                   "bias": self.classifier.bias.detach().contiguous()}, str(folder / HEAD_FILE))
        (folder / HEAD_CONFIG).write_text(json.dumps(self.head_config, indent=2), encoding="utf-8")


def head_config(folder: Path) -> dict[str, Any]:
    """classifier.json of a static run: its labels and problem type."""
    try:
        return json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LmcError(f"cannot read the static-embedding head in {folder}: {exc}") from None


def load_static(folder: Path, labels: list[str] | None, regression: bool) -> StaticClassifier:
    """A saved static run, its head checked against the data's task and labels."""
    try:
        head_config = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
        static_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "model.safetensors"))
        head = load_file(str(folder / HEAD_FILE))
        tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise LmcError(f"cannot load the static-embedding model in {folder}: {exc}") from None
    if "mapping" in tensors:
        raise LmcError(f"{folder} is a vocabulary-quantized model2vec model; lmcompress reads plain tables only")
    table = tensors["embeddings"].float()
    if "weights" in tensors:  # model2vec's per-token weights, folded into the rows
        table = table * tensors["weights"].float().unsqueeze(-1)
    saved_regression = head_config.get("problem_type") == "regression"
    if regression != saved_regression:
        raise LmcError(f"{folder} holds a {'regression' if saved_regression else 'classification'} model but the "
                       f"data is a {'regression' if regression else 'classification'} task")
    if labels is not None and head_config.get("labels") != labels:
        raise LmcError(f"{folder} was trained for labels {head_config.get('labels')} but the data has {labels}")
    model = StaticClassifier(table, head["weight"].shape[0], head_config.get("unk_id"), head_config, static_config,
                             tokenizer_json)
    model.classifier.load_state_dict(head)
    return model.eval()
