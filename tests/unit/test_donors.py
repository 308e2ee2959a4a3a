"""Pre-trained donors in `auto`: their shapes, how they are timed, which ones are found, the steps that make them."""

from __future__ import annotations

import torch
import pytest
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification,
                          MPNetConfig)

from lmcompress.errors import LmcError
from lmcompress.models.families import family_of
from lmcompress.search.donors import Donor, find_donors
from lmcompress.search.shapes import Shape, batch_for, donor_grid, random_model

DONOR = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)


def test_a_donor_s_shapes_are_itself_and_its_cuts_named_after_it():
    shapes = donor_grid("small", DONOR)
    assert [s.layers for s in shapes] == [1, 2, 3]
    assert {(s.hidden, s.heads, s.ffn, s.origin) for s in shapes} == {(32, 4, 48, "small")}
    assert shapes[-1].name == "small-L3-H32-A4-F48" and Shape(3, 4, 32, 48).name == "L3-H32-A4-F48"
    assert shapes[-1] != Shape(3, 4, 32, 48)  # a donor's shape is never mistaken for a cut of the same size


def test_a_donor_shape_is_timed_as_the_donor_s_architecture_with_the_teacher_s_head():
    teacher_config = MPNetConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, num_labels=3)
    teacher = AutoModelForSequenceClassification.from_config(teacher_config).eval()
    model = random_model(teacher, family_of(teacher_config), Shape(2, 4, 32, 48, origin="small"), 60, 1,
                         {"small": DONOR})
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.num_hidden_layers == 2 and model.config.num_labels == 3
    batch = {"input_ids": torch.tensor([[2, 59, 45, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 4, dtype=torch.long)}
    inputs = batch_for(model, batch)
    assert int(inputs["input_ids"].max()) == 39  # the teacher's ids beyond the donor's vocabulary, clamped
    assert model(**inputs).logits.shape == (1, 3)
    assert "token_type_ids" not in batch_for(teacher, batch)  # MPNet takes no token types
    assert batch_for(teacher, batch)["input_ids"].equal(batch["input_ids"])


def test_donors_named_or_found(tiny_bert_dir, tiny_tokenizer_dir, clm_teacher, tmp_path):
    vocab = AutoTokenizer.from_pretrained(tiny_tokenizer_dir).get_vocab()
    assert find_donors("none", vocab, DONOR, 32) == []
    (donor,) = find_donors(str(tiny_bert_dir), vocab, DONOR, 32)
    assert donor.label == tiny_bert_dir.name and donor.same_tokenizer and donor.params > 0
    assert donor.student_spec(Shape(2, 4, 32, 37, origin=donor.label)) == str(tiny_bert_dir)  # whole: 2 layers
    assert donor.student_spec(Shape(1, 4, 32, 37, origin=donor.label)) == f"{tiny_bert_dir};layers=1"
    (other,) = find_donors(str(tiny_bert_dir), {"[PAD]": 0}, DONOR, 32)
    assert not other.same_tokenizer
    with pytest.raises(LmcError, match="a donor is an encoder"):
        find_donors(str(clm_teacher), vocab, DONOR, 32)
    with pytest.raises(LmcError, match="unknown donor"):
        find_donors(str(tmp_path / "missing"), vocab, DONOR, 32)
    with pytest.raises(LmcError, match="donor bert-2l-32h is a preset"):
        find_donors("bert-2l-32h", vocab, DONOR, 32)
    with pytest.raises(LmcError, match="takes at most 128 tokens"):
        find_donors(str(tiny_bert_dir), vocab, DONOR, 512)
    with pytest.raises(LmcError, match="two donors share the name"):
        find_donors(f"{tiny_bert_dir},{tiny_bert_dir}/.", vocab, DONOR, 32)


def test_auto_donors_are_installed_zoo_encoders_smaller_than_the_teacher(monkeypatch, tiny_bert_dir):
    from lmcompress import catalog

    entry = catalog.ZooEntry("tiny-donor", "model", "test", "pip install tiny", None, str(tiny_bert_dir),
                             encoder_params=1_000)
    big = catalog.ZooEntry("big-donor", "model", "test", "pip install big", None, str(tiny_bert_dir),
                           encoder_params=10**12)
    monkeypatch.setattr(catalog, "ENTRIES", {"tiny-donor": entry, "big-donor": big})
    vocab = AutoTokenizer.from_pretrained(tiny_bert_dir).get_vocab()
    donors = find_donors("auto", vocab, BertConfig(vocab_size=40, hidden_size=64, num_hidden_layers=4,
                                                   num_attention_heads=4, intermediate_size=64), 32)
    assert [d.label for d in donors] == ["tiny-donor"] and isinstance(donors[0], Donor)


def test_donors_of_other_encoder_families_and_their_token_types(tiny_tokenizer_dir, tmp_path):
    from transformers import MPNetForMaskedLM, RobertaConfig, RobertaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    folder = tmp_path / "mpnet-donor"
    MPNetForMaskedLM(MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=48)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (donor,) = find_donors(str(folder), tokenizer.get_vocab(), DONOR, 32)
    assert donor.config.model_type == "mpnet" and donor.same_tokenizer
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1,
                                                             num_attention_heads=4, intermediate_size=48,
                                                             type_vocab_size=1)).eval()
    pair = {"input_ids": torch.tensor([[0, 5, 2, 2, 7, 2]]), "attention_mask": torch.ones(1, 6, dtype=torch.long),
            "token_type_ids": torch.tensor([[0, 0, 0, 1, 1, 1]])}  # a BERT teacher's pair batch
    inputs = batch_for(roberta, pair)
    assert int(inputs["token_type_ids"].max()) == 0 and roberta(**inputs).logits.shape == (1, 2)


def test_a_search_recorded_before_donors_resumes_without_them(tmp_path):
    import json

    from lmcompress.config import AutoConfig, DataConfig, to_dict
    from lmcompress.search.run import REQUEST_FILE, _check_request

    data = DataConfig(data="rotten-tomatoes")
    old = to_dict(AutoConfig(teacher="t", out=str(tmp_path), min_speedup=10.0))
    recorded = {k: v for k, v in old.items() if k in ("teacher", "batch_size", "seq_len", "backend", "augment",
                                                      "screen_rows", "epochs", "learning_rate")}
    (tmp_path / REQUEST_FILE).write_text(json.dumps(recorded | {"data": to_dict(data)}))
    _check_request(AutoConfig(teacher="t", out=str(tmp_path), min_speedup=10.0, donors="none"), tmp_path, data, 0)
    with pytest.raises(LmcError, match="donors"):
        _check_request(AutoConfig(teacher="t", out=str(tmp_path), min_speedup=20.0, donors="auto"), tmp_path, data, 0)
    # it made no word spans either: asked to, the re-run is refused and told how to continue
    with pytest.raises(LmcError, match=r"augment_spans.*\(--augment-spans 0 continues it\)"):
        _check_request(AutoConfig(teacher="t", out=str(tmp_path), min_speedup=10.0, donors="none"), tmp_path, data, 4)
