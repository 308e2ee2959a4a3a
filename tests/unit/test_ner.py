"""Token-classification data: readers, People's Daily conversion, sub-token alignment, entity metrics."""

import json

import pandas as pd
import pytest

from lmcompress.config import DataConfig
from lmcompress.data import load_task
from lmcompress.data import ner
from lmcompress.errors import LmcError


def test_conll_reader_sentences_docstart_and_extra_columns(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- O\n\nJohn NNP B-PER\nlives VBZ O\nin IN O\nNew NNP B-LOC\nYork NNP I-LOC\n\n"
                    "# a comment\nHi UH O\n", encoding="utf-8")
    frame = ner.read_conll(path)
    assert frame["tokens"].tolist() == [["John", "lives", "in", "New", "York"], ["Hi"]]
    assert frame["tags"].tolist() == [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["O"]]
    assert frame["text"].tolist() == ["John lives in New York", "Hi"]
    path.write_text("John B-PER\nlonely\n", encoding="utf-8")
    with pytest.raises(LmcError, match=r"train.conll:2: expected a token and a tag"):
        ner.read_conll(path)


def test_token_jsonl_reader_checks_equal_lengths(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}) + "\n", encoding="utf-8")
    assert ner.is_token_jsonl(path) and ner.read_token_jsonl(path)["tags"].tolist() == [["B-X", "I-X"]]
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(LmcError, match="same length"):
        ner.read_token_jsonl(path)


def test_peoples_daily_to_character_bio(tmp_path):
    path = tmp_path / "pd.txt"
    path.write_text("主席/n  江/nr  泽民/nr  在/p  北京/ns  。/w  [中国/ns  政府/n]nt  发言/v\n", encoding="utf-8")
    sentences = ner.peoples_daily_sentences(path)
    assert len(sentences) == 2  # split after 。
    chars, tags = sentences[0]
    assert "".join(chars) == "主席江泽民在北京。"
    assert tags == ["O", "O", "B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]  # surname + name: one person
    chars, tags = sentences[1]
    assert "".join(chars) == "中国政府发言" and tags == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O"]


def test_alignment_labels_first_sub_tokens_only():
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert ner.align_labels(word_ids, [3, 0, 1]) == [-100, 3, -100, 0, 1, -100, -100, -100]
    assert ner.words_of_labelled_positions(word_ids) == [0, 1, 2]
    assert ner.words_of_labelled_positions([None, 0, 2, None]) == [0, 2]  # word 1 gave no sub-token


def test_entity_metrics_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]
    scores = ner.entity_metrics(gold, predicted, "BIO")
    assert scores["precision"] == 1.0 and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8) and scores["word_accuracy"] == pytest.approx(5 / 6)
    # a wrong boundary is a miss, and an I- without its B- is no entity in strict mode
    scores = ner.entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]], "BIO")
    assert scores["f1"] == 0.0
    assert ner.entity_metrics([["O", "B-PER"]], [["O", "I-PER"]], "BIO")["precision"] == 0.0
    assert ner.tag_scheme(["O", "B-X", "E-X", "S-X"]) == "BIOES"
    with pytest.raises(LmcError, match="not BIO/BIOES"):
        ner.tag_scheme(["O", "PER"])


def test_load_task_on_a_conll_folder_maps_tags_and_rejects_unseen_ones(tmp_path):
    rows = "\n\n".join(f"w{i} B-PER\nx O" for i in range(30))
    (tmp_path / "train.conll").write_text(rows + "\n", encoding="utf-8")
    (tmp_path / "test.conll").write_text("a B-PER\nb O\n", encoding="utf-8")
    task = load_task(DataConfig(data=str(tmp_path)))
    assert task.task == "token-classification" and task.labels == ["O", "B-PER"]
    assert task.split_record["split_from"] == "files" and task.split_record["tag_scheme"] == "BIO"
    assert task.split_record["sizes"] == {"train": 27, "validation": 3, "test": 1}  # validation carved from train
    assert task.splits["test"]["tags"].tolist() == [[1, 0]]
    again = load_task(DataConfig(data=str(tmp_path)))
    assert again.split_record["test_fingerprint"] == task.split_record["test_fingerprint"]
    (tmp_path / "test.conll").write_text("a B-PER\nb I-PER\n", encoding="utf-8")
    with pytest.raises(LmcError, match=r"test split has tag\(s\) \['I-PER'\] that never occur in train"):
        load_task(DataConfig(data=str(tmp_path)))


def test_tokenize_words_aligns_with_a_real_fast_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    frame = pd.DataFrame({"tokens": [["good", "zed", "film"]], "tags": [[1, 2, 0]]})
    row = ner.tokenize_words(frame, tok, 32)[0]
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "good", "z", "##e", "##d", "film", "[SEP]"]
    assert row["labels"] == [-100, 1, 2, -100, -100, 0, -100]


@pytest.mark.parametrize("name", ["train.conll", "train.jsonl"])
def test_token_files_in_another_encoding_need_encoding_auto_or_its_name(tmp_path, name):
    path = tmp_path / name
    text = ("Zoë B-PER\ncafé O\n" if name.endswith("conll") else
            json.dumps({"tokens": ["Zoë", "café"], "tags": ["B-PER", "O"]}, ensure_ascii=False) + "\n")
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LmcError, match="is not UTF-8 text .*--encoding auto"):
        ner.read_token_source(path)
    for encoding in ("auto", "latin-1"):
        assert ner.read_token_source(path, encoding)["tokens"].tolist() == [["Zoë", "café"]]
