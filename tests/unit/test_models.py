import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lmcompress.errors import LmcError
from lmcompress.models.load import load_for_sequence_classification, load_tokenizer, load_trained_classifier, resolve
from lmcompress.models.outputs import forward
from lmcompress.models.presets import parse_preset

FAMILIES = ["bert", "roberta", "albert", "gpt2"]


def test_preset_parsing():
    assert parse_preset("bert-4l-312h").heads == 12
    assert parse_preset("bert-2l-128h").heads == 2
    assert parse_preset("roberta-6l-768h").heads == 12
    assert parse_preset("gpt2-2l-32h-4a").heads == 4
    assert parse_preset("minilm-l6") is None
    with pytest.raises(LmcError, match="not divisible"):
        parse_preset("bert-2l-30h-4a")


def test_unknown_model_spec_is_one_clear_error():
    with pytest.raises(LmcError, match="unknown model 'no-such-model'"):
        resolve("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(LmcError, match="without config.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_preset_trains_a_step_and_adapts_outputs(family, tiny_tokenizer_dir):
    source = resolve(f"{family}-2l-32h-4a", tokenizer=str(tiny_tokenizer_dir))
    tok = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tok, 3, ["a", "b", "c"], regression=False, seed=0)
    batch = dict(tok(["good movie", "bad plot and acting"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 2])
    out = forward(model, batch, hidden_states=True)
    assert out.logits.shape == (2, 3)  # [B, C]
    assert out.loss is not None and torch.isfinite(out.loss)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[:2] == batch["input_ids"].shape  # L+1 x [B,T,H]
    assert out.attention_mask is batch["attention_mask"]
    out.loss.backward()
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_reloads_with_plain_transformers(family, tiny_tokenizer_dir, tmp_path):
    source = resolve(f"{family}-2l-32h-4a", tokenizer=str(tiny_tokenizer_dir))
    tok = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tok, 2, ["neg", "pos"], regression=False, seed=0).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["a good film", "awful"]
    with torch.no_grad():
        a = model(**tok(texts, padding=True, return_tensors="pt")).logits
        b = reloaded(**tok2(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(a, b)
    assert reloaded.config.label2id == {"neg": 0, "pos": 1}


def test_headless_checkpoint_gets_a_fresh_head(tiny_bert_dir):
    source = resolve(str(tiny_bert_dir))
    tok = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tok, 1, None, regression=True, seed=0)
    assert model.config.problem_type == "regression" and model.num_labels == 1


def test_mismatched_tokenizer_is_refused(tiny_bert_dir, tmp_path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(500)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "tok")
    source = resolve(str(tiny_bert_dir), tokenizer=str(tmp_path / "tok"))
    tok = load_tokenizer(source.tokenizer_path)
    with pytest.raises(LmcError, match="does not belong to this model"):
        load_for_sequence_classification(source, tok, 2, ["a", "b"], regression=False, seed=0)


def test_corrupt_weights_are_one_line(tiny_bert_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    source = resolve(str(broken))
    tok = load_tokenizer(source.tokenizer_path)
    with pytest.raises(LmcError, match="cannot load model from"):
        load_for_sequence_classification(source, tok, 2, ["a", "b"], regression=False, seed=0)


def test_trained_head_must_match_data_labels(tiny_tokenizer_dir, tmp_path):
    source = resolve("bert-2l-32h-4a", tokenizer=str(tiny_tokenizer_dir))
    tok = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tok, 2, ["neg", "pos"], regression=False, seed=0)
    model.save_pretrained(tmp_path)
    assert load_trained_classifier(tmp_path, ["neg", "pos"], regression=False).num_labels == 2
    with pytest.raises(LmcError, match=r"trained for labels \['neg', 'pos'\]"):
        load_trained_classifier(tmp_path, ["a", "b", "c"], regression=False)
    with pytest.raises(LmcError, match="classification model but the data is a regression task"):
        load_trained_classifier(tmp_path, None, regression=True)


def test_tokenizer_with_only_special_tokens_is_refused(tmp_path):
    from transformers import BertTokenizerFast

    empty = tmp_path / "vocab.txt"
    empty.write_text("")
    BertTokenizerFast(vocab_file=str(empty)).save_pretrained(tmp_path / "tok")  # the silent length-5 pitfall
    with pytest.raises(LmcError, match="vocabulary is missing"):
        load_tokenizer(tmp_path / "tok")
