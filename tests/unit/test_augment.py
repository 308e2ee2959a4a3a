"""TinyBERT-style word replacement with neighbours from an input-embedding table; word spans of the texts."""

from __future__ import annotations

import numpy as np
import torch

from lmcompress.distillation.augment import (EmbeddingNeighbours, replace_words, whole_word_tokens, word_replaced_texts,
                                             word_spans)


def _tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_whole_word_tokens_are_the_words_that_tokenise_to_themselves(tiny_tokenizer_dir):
    tokenizer = _tokenizer(tiny_tokenizer_dir)
    words, ids = whole_word_tokens(tokenizer)
    assert "good" in words and "movie" in words
    assert not any(w.startswith("##") or w.startswith("[") for w in words)  # no pieces, no special tokens
    assert all(len(w) >= 2 for w in words)  # single letters are not words to swap in
    assert tokenizer.convert_ids_to_tokens(ids[words.index("good")]) == "good"


def test_neighbours_follow_the_embedding_geometry(tiny_tokenizer_dir):
    tokenizer = _tokenizer(tiny_tokenizer_dir)
    vocab = tokenizer.get_vocab()
    table = torch.randn(len(tokenizer), 8)
    table[vocab["great"]] = table[vocab["good"]] + 0.01  # "great" sits right next to "good"
    neighbours = EmbeddingNeighbours(tokenizer, table, k=3)
    assert neighbours("good")[0] == "great" and "good" not in neighbours("good") and len(neighbours("good")) == 3
    assert neighbours("Good") == neighbours("good")  # cached by the lower-cased word


def test_replacement_keeps_spacing_numbers_and_punctuation():
    rng = np.random.default_rng(0)
    swap = {"good": ["fine"], "movie": ["film"]}
    assert replace_words("a good  movie , 10 / 10", lambda w: swap.get(w, []), 1.0, rng) == "a fine  film , 10 / 10"
    assert replace_words("a good movie", lambda w: swap.get(w, []), 1e-9, rng) == "a good movie"


def test_variants_are_seeded_new_and_unique():
    neighbours = {"good": ["fine", "great"], "movie": ["film", "picture"]}.get
    texts = ["good movie", "a good movie"]
    first = word_replaced_texts(texts, lambda w: neighbours(w) or [], 6, 0.5, seed=1)
    assert first == word_replaced_texts(texts, lambda w: neighbours(w) or [], 6, 0.5, seed=1)
    assert len(first) == len(set(first)) and not set(first) & set(texts)
    assert all(len(v.split()) in (2, 3) for v in first) and first  # words swapped one for one


def test_word_spans_are_contiguous_phrases_of_40_to_80_percent_drawn_round_by_round():
    texts = [" ".join(f"w{i}{letter}" for letter in "abcdefghijkl") for i in range(6)] + ["too short"]  # 12 words
    spans = word_spans(texts, variants=3, seed=0)
    assert spans == word_spans(texts, variants=3, seed=0) and spans != word_spans(texts, variants=3, seed=1)
    assert len(spans) == len(set(spans)) and not set(spans) & set(texts)
    for span in spans:
        words, source = span.split(), next(t.split() for t in texts if span in t)
        assert max(3, int(0.4 * len(source))) <= len(words) <= int(0.8 * len(source))
        assert any(source[i:i + len(words)] == words for i in range(len(source)))  # contiguous words of one text
    # round by round: the first six spans come one from each long text (the two-word text gives none)
    assert [next(i for i, t in enumerate(texts) if s in t) for s in spans[:6]] == list(range(6))
