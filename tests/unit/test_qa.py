"""Extractive QA: SQuAD reading, context split, windows and answer positions, n-best decoding, EM/F1 — checked
against values worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmcompress.data import qa
from lmcompress.errors import LmcError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "squad_mini.json"


# ------------------------------------------------------------------------------------------------ metrics


def test_normalisation_follows_the_squad_script():
    assert qa.normalize_answer("The  Chalcogen group!") == "chalcogen group"
    assert qa.normalize_answer("an apple, a pear") == "apple pear"
    assert qa.normalize_answer("Theory") == "theory"  # "the" only as a word
    assert qa.normalize_answer("华北平原。") == "华北平原"


def test_exact_match_and_f1_by_hand():
    assert qa.exact_match("the France", "France.") == 1.0
    # pred tokens [big, cat], gold [cat, sat]: 1 in common -> P = R = 1/2 -> F1 = 1/2
    assert qa.token_f1("the big cat", "a cat sat") == pytest.approx(0.5)
    # pred [denmark, iceland], gold [denmark, iceland, and, norway]: P = 1, R = 1/2 -> F1 = 2/3
    assert qa.token_f1("Denmark, Iceland", "Denmark, Iceland and Norway") == pytest.approx(2 / 3)
    assert qa.token_f1("", "") == 1.0 and qa.token_f1("x", "") == 0.0 and qa.token_f1("", "x") == 0.0
    # Chinese: one token per character; pred [华, 北], gold [华, 北, 平, 原] -> P = 1, R = 1/2 -> F1 = 2/3
    assert qa.token_f1("华北", "华北平原") == pytest.approx(2 / 3)


def test_squad_metrics_take_the_best_gold_answer_and_average():
    predictions = ["France", "Denmark, Iceland", "", "eight"]
    golds = [["France", "France."], ["Denmark, Iceland and Norway"], [], ["8"]]
    scores = qa.squad_metrics(predictions, golds)
    # EM: 1 + 0 + 1 (empty vs unanswerable) + 0 = 2 / 4; F1: 1 + 2/3 + 1 + 0 = 8/3 / 4
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((8 / 3) / 4)


# ------------------------------------------------------------------------------------------------ reading


def test_read_squad_json_with_unanswerable_questions():
    frame = qa.read_squad(FIXTURE)
    assert frame["id"].tolist() == ["n1", "n2", "n3", "o1", "o2", "z1", "z2"]
    assert frame.loc[2, "answer_texts"] == [] and frame.loc[0, "answer_texts"] == ["France", "France."]
    assert (frame["text"] == frame["question"]).all() and (frame["text_pair"] == frame["context"]).all()


def test_read_jsonl_in_the_datasets_layout(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "question": "who?", "context": "Ann met Bob.", "answers": {"text": ["Ann"], "answer_start": [0]}},
            {"id": "b", "question": "whom?", "context": "Ann met Bob.", "answers": [{"text": "Bob", "answer_start": 8}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert qa.is_squad_file(path)
    frame = qa.read_squad(path)
    assert frame["answer_texts"].tolist() == [["Ann"], ["Bob"]] and frame["answer_starts"].tolist() == [[0], [8]]


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=3), "not found at its"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="n1"), "occurs twice"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[{"text": "France"}]), "'answer_start'"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context=""), "non-empty strings"),
])
def test_malformed_squad_is_one_error(tmp_path, mutate, fragment):
    document = json.loads(FIXTURE.read_text(encoding="utf-8"))
    mutate(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(LmcError, match=fragment):
        qa.read_squad(path)


def test_a_folder_of_squad_files_by_their_own_names(tmp_path):
    (tmp_path / "train-v2.0.json").write_text(FIXTURE.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "dev-v2.0.json").write_text(FIXTURE.read_text(encoding="utf-8"), encoding="utf-8")
    assert qa.looks_like_qa_data(tmp_path)
    splits = qa.read_qa_source(tmp_path)
    assert set(splits) == {"train", "validation"}


def test_split_keeps_each_context_in_one_split():
    frame = qa.read_squad(FIXTURE)
    splits = qa.split_by_context(frame, 0.34, 0.34, seed=3)
    contexts = [set(splits[s]["context"]) for s in ("train", "validation", "test")]
    assert all(contexts) and not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    assert sum(len(s) for s in splits.values()) == len(frame)
    again = qa.split_by_context(frame, 0.34, 0.34, seed=3)
    assert all(again[s]["id"].tolist() == splits[s]["id"].tolist() for s in splits)
    with pytest.raises(LmcError, match="too few"):
        qa.split_by_context(frame.iloc[:3], 0.1, 0.1, seed=0)  # one context cannot fill three splits


# ------------------------------------------------------------------------------------------------ windows


def test_answer_positions_by_hand():
    # [CLS] q [SEP] "ann"(0,3) "met"(4,7) "bob"(8,11) [SEP]
    offsets = [(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (8, 11), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, None]
    assert qa.answer_positions(offsets, sequence_ids, 4, 11) == (4, 5)  # "met bob"
    assert qa.answer_positions(offsets, sequence_ids, 8, 11) == (5, 5)
    assert qa.answer_positions(offsets, sequence_ids, None, None) == (qa.CLS_INDEX, qa.CLS_INDEX)
    window = [None, 0, None, 1, 1, None]  # a window that ends before "bob"
    assert qa.answer_positions(offsets[:5] + [(0, 0)], window, 8, 11) == (qa.CLS_INDEX, qa.CLS_INDEX)


def test_windows_hold_each_answer_and_point_to_it(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    frame = qa.read_squad(FIXTURE)
    frame = frame[frame["id"].isin(["n1", "n2", "o2"])].reset_index(drop=True)
    dataset = qa.tokenize_train_features(frame, tokenizer, max_length=128, stride=32)
    encoded = qa._encode(frame, tokenizer, 128, 32)
    assert len(dataset) > len(frame)  # the long contexts need several windows (a token per letter here)
    found = set()
    for i, row in enumerate(dataset):
        example = encoded["overflow_to_sample_mapping"][i]
        if row["start_positions"] == qa.CLS_INDEX:
            continue
        offsets = encoded["offset_mapping"][i]
        context = frame.loc[example, "context"]
        text = context[offsets[row["start_positions"]][0]:offsets[row["end_positions"]][1]]
        assert text == frame.loc[example, "answer_texts"][0]
        found.add(example)
    assert found == {0, 1, 2}  # an answer no longer than the stride is whole in some window


def test_a_question_longer_than_the_window_is_refused(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    frame = qa.read_squad(FIXTURE).iloc[:1]
    with pytest.raises(LmcError, match="raise --max-length or lower --doc-stride"):
        qa.tokenize_train_features(frame, tokenizer, max_length=40, stride=8)  # the question is 30+ letters


# ------------------------------------------------------------------------------------------------ decoding


def test_best_span_respects_context_order_and_length():
    offsets = [None, None, (0, 3), (4, 7), (8, 11), None]
    start = np.array([9.0, 0.0, 1.0, 5.0, 2.0, 0.0])
    end = np.array([9.0, 0.0, 4.0, 1.0, 3.0, 0.0])
    # CLS (9 + 9) and the question are not context; end before start is invalid: best is start 3 + end 4 = 8
    assert qa.best_span(start, end, offsets, n_best=20, max_answer_length=30) == (8.0, 4, 11)
    # at most one token long: start 4 + end 4 = 5 beats start 2 + end 2 = 5? equal -> the first found (start 3 is
    # excluded, end 2 < start 3 ...): candidates (3,3)=6, (2,2)=5, (4,4)=5 -> (3,3)
    assert qa.best_span(start, end, offsets, n_best=20, max_answer_length=1) == (6.0, 4, 7)
    assert qa.best_span(start, end, [None] * 6, 20, 30) is None


def test_decode_answers_picks_the_best_window_and_the_empty_answer_when_allowed():
    context = "ann met bob"
    features = qa.EvalFeatures(dataset=None, example_of=[0, 0],
                               offsets=[[None, (0, 3), (4, 7)], [None, (4, 7), (8, 11)]])
    starts = [np.array([1.0, 2.0, 0.0]), np.array([0.5, 0.0, 3.0])]
    ends = [np.array([1.0, 2.0, 0.0]), np.array([0.5, 0.0, 3.0])]
    # window 1's "bob" (3 + 3 = 6) beats window 0's "ann" (2 + 2 = 4)
    assert qa.decode_answers(starts, ends, features, [context], 20, 30, allow_empty=False) == ["bob"]
    # the empty answer scores the lowest CLS start+end over the windows: min(2, 1) = 1 < 6 -> still "bob"
    assert qa.decode_answers(starts, ends, features, [context], 20, 30, allow_empty=True) == ["bob"]
    starts[1][0] = ends[1][0] = starts[0][0] = ends[0][0] = 4.0  # now min CLS score 8 > 6
    assert qa.decode_answers(starts, ends, features, [context], 20, 30, allow_empty=True) == [""]
    assert qa.decode_answers(starts, ends, features, [context], 20, 30, allow_empty=False) == ["bob"]


def test_decoding_oracle_logits_over_real_windows_gives_back_the_gold_answers(tiny_tokenizer_dir):
    """Logits peaked at the training targets of each window decode, through the offset mapping, to the gold text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    frame = qa.read_squad(FIXTURE)
    frame = frame[frame["answer_texts"].map(bool)].reset_index(drop=True)
    targets = qa.tokenize_train_features(frame, tokenizer, max_length=128, stride=32)
    features = qa.tokenize_eval_features(frame, tokenizer, max_length=128, stride=32)
    assert len(features.example_of) == len(targets)  # the same windows
    starts, ends = [], []
    for row, ids in zip(targets, features.dataset["input_ids"]):
        start, end = np.zeros(len(ids)), np.zeros(len(ids))
        start[row["start_positions"]] += 10.0
        end[row["end_positions"]] += 10.0
        starts.append(start)
        ends.append(end)
    answers = qa.decode_answers(starts, ends, features, frame["context"].tolist(), 20, 64, allow_empty=False)
    assert answers == [texts[0] for texts in frame["answer_texts"]]
    assert qa.squad_metrics(answers, frame["answer_texts"].tolist()) == {"exact_match": 1.0, "f1": 1.0}


def test_squad_file_in_another_encoding_needs_encoding_auto_or_its_name(tmp_path):
    path = tmp_path / "train.jsonl"
    row = {"question": "Who drank the café au lait?", "context": "Zoë drank the café au lait.",
           "answers": {"text": ["Zoë"], "answer_start": [0]}}
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("cp1252"))
    with pytest.raises(LmcError, match="is not UTF-8 text .*--encoding auto"):
        qa.read_qa_source(path)
    for encoding in ("auto", "cp1252"):
        assert qa.read_qa_source(path, encoding)["context"].tolist() == ["Zoë drank the café au lait."]
