"""Opt-in (`scripts/test.sh -m slow`): the real minilm-l3 rebuilt from its ONNX graph reproduces the graph."""

import json

import pytest
from lmcompress import catalog
from lmcompress.models.onnx_bert import MAX_DIFFERENCE, zoo_model_dir
from transformers import AutoModel

pytestmark = pytest.mark.slow


def test_minilm_l3_token_outputs_equal_its_onnx_graph():
    entry = catalog.get("minilm-l3")
    if not entry.installed():
        pytest.skip(f"minilm-l3 not installed ({entry.install})")
    folder = zoo_model_dir(entry)
    record = json.loads((folder / "rebuilt_from_onnx.json").read_text())
    assert record["max_token_output_difference"] <= MAX_DIFFERENCE
    model = AutoModel.from_pretrained(folder)
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 384
    # 17.4M with the pooler transformers adds (the graph has none: it starts untrained, like a task head)
    assert sum(p.numel() for p in model.parameters()) == 17_389_824
