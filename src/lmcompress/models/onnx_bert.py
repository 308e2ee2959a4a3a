"""A BERT encoder shipped only as an ONNX graph (no config, no tokenizer) -> a plain Hugging Face `BertModel` folder.

Exporters keep the biases and LayerNorm parameters under their module names but often give the projection weights
anonymous names (`onnx::MatMul_470`): each such weight is found through the `Add` that follows its `MatMul`, whose
other input is the named bias of the same `nn.Linear`. ONNX multiplies `x @ W`, `nn.Linear` stores `W.T`.

The rebuilt model is only accepted when its token outputs equal the graph's on real text (`MAX_DIFFERENCE`); the
folder is written atomically, so a killed build never leaves half a model behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from .. import catalog
from ..errors import LmcError

log = logging.getLogger("lmcompress")

MAX_DIFFERENCE = 1e-5  # the largest |token output difference| accepted between the graph and the rebuilt model
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHECK_TEXTS = ("A gripping, beautifully acted film that stays with you long after the credits.",
               "the plot is thin and the jokes fall flat",
               "Paris is the capital of France.")
BERT_PARTS = ("embeddings.", "encoder.", "pooler.")


@dataclass(frozen=True)
class Rebuilt:
    """A rebuilt folder and how closely it reproduces its graph."""

    folder: Path
    max_difference: float
    layers: int


def _state_key(name: str) -> str | None:
    """`model.0.auto_model.encoder.layer.0.output.dense.bias` -> `encoder.layer.0.output.dense.bias`."""
    starts = [name.find(part) for part in BERT_PARTS if part in name]
    return name[min(starts):] if starts else None


def graph_state_dict(graph) -> dict[str, torch.Tensor]:
    """Every BERT parameter of the graph (an onnx.ModelProto) under its `BertModel` state-dict name."""
    from onnx import numpy_helper  # onnx loads in about a second: only when a graph is rebuilt

    arrays = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    state = {key: torch.from_numpy(array.copy()) for name, array in arrays.items()
             if (key := _state_key(name)) is not None}
    consumers: dict[str, list] = {}
    for node in graph.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    for node in graph.graph.node:
        weight = next((value for value in node.input if value in arrays and _state_key(value) is None), None)
        if node.op_type != "MatMul" or weight is None:
            continue
        bias = next((value for add in consumers.get(node.output[0], []) if add.op_type == "Add"
                     for value in add.input if value in arrays and (_state_key(value) or "").endswith(".bias")), None)
        if bias is None:
            raise LmcError(f"the ONNX graph's weight {weight} is not followed by a named bias; cannot tell which layer "
                           "it belongs to")
        state[_state_key(bias)[:-len("bias")] + "weight"] = torch.from_numpy(arrays[weight].T.copy())
    return state


def bert_config(state: dict[str, torch.Tensor], num_heads: int, layer_norm_eps: float) -> BertConfig:
    """The config the parameters imply (the head count is not in the weights: the caller names it)."""
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("encoder.layer."))
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=num_heads,
                      intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
                      layer_norm_eps=layer_norm_eps, architectures=["BertModel"])


def _layer_norm_eps(graph) -> float:
    """The epsilon of the graph's LayerNormalization nodes (BERT's 1e-12 when they are decomposed)."""
    for node in graph.graph.node:
        if node.op_type == "LayerNormalization":
            return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    return 1e-12


def rebuild_bert(graph_path: Path, num_heads: int) -> BertModel:
    """The graph's parameters in a `BertModel` (its pooler, when the graph has none, stays freshly initialised)."""
    import onnx  # loads in about a second: only when a graph is rebuilt, never on the paths that load a model

    graph = onnx.load(str(graph_path))
    state = graph_state_dict(graph)
    config = bert_config(state, num_heads, _layer_norm_eps(graph))
    has_pooler = "pooler.dense.weight" in state
    model = BertModel(config, add_pooling_layer=has_pooler)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids") and "token_type_ids" not in key]
    if missing or unexpected:
        raise LmcError(f"the ONNX graph does not map onto a BertModel: missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}")
    return model.eval()


def token_output_difference(model: BertModel, graph_path: Path, tokenizer) -> float:
    """max |graph token outputs - model token outputs| over CHECK_TEXTS (padded, so the mask matters too)."""
    import onnxruntime as ort  # as onnx above

    batch = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="np")
    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) if i.name in batch else np.zeros_like(batch["input_ids"])
             for i in session.get_inputs()}
    hidden = model.config.hidden_size
    outputs = session.run(None, feeds)
    tokens = next((o for o in outputs if o.ndim == 3 and o.shape[-1] == hidden), None)
    if tokens is None:
        raise LmcError("the ONNX graph has no token output (batch x tokens x hidden) to check the rebuild against")
    with torch.no_grad():
        ours = model(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask")}).last_hidden_state
    mask = batch["attention_mask"].astype(bool)
    return float(np.abs(tokens[mask] - ours.numpy()[mask]).max())


def write_rebuilt(graph_path: Path, tokenizer_dir: Path, target: Path, num_heads: int) -> Rebuilt:
    """Rebuild, check against the graph, and write `target` (weights, config, the tokenizer files) atomically."""
    model = rebuild_bert(graph_path, num_heads)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    if len(tokenizer) != model.config.vocab_size:
        raise LmcError(f"the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens, the ONNX graph's embedding "
                       f"{model.config.vocab_size}: not its vocabulary")
    difference = token_output_difference(model, graph_path, tokenizer)
    if not difference <= MAX_DIFFERENCE:
        raise LmcError(f"the rebuilt BertModel differs from its ONNX graph by {difference:.2e} (> {MAX_DIFFERENCE}): "
                       "wrong head count or an unsupported graph")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
        folder = Path(work) / "model"
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, folder / name)
        record = {"graph": str(graph_path), "max_token_output_difference": difference, "checked_on": CHECK_TEXTS}
        (folder / "rebuilt_from_onnx.json").write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.replace(folder, target)  # atomic; fails when the target is a folder that is not empty
        except OSError:
            if not (target / "config.json").is_file():  # not a second process that finished first
                raise LmcError(f"cannot write {target}: it holds something else; remove it and retry") from None
    log.info("rebuilt %s from %s: %d layers, token outputs within %.1e of the graph", target.name, graph_path.name,
             model.config.num_hidden_layers, difference)
    return Rebuilt(target, difference, model.config.num_hidden_layers)


def zoo_model_dir(entry: catalog.ZooEntry) -> Path:
    """A zoo model's folder; an entry shipped as an ONNX graph is rebuilt (and checked) once on first use."""
    if entry.onnx_graph is None or entry.locate() is not None:
        return entry.require()
    graph, vocabulary = entry.graph_file(), catalog.get(entry.vocabulary_from).locate()
    if graph is None or vocabulary is None:
        raise LmcError(f"zoo entry '{entry.name}' is not installed; install it with: {entry.install}")
    return write_rebuilt(graph, vocabulary, entry.built_folder(), entry.num_heads).folder
