"""Texts for the teacher to label beside the training rows: TinyBERT-style word replacement, word spans of the
training texts, unlabelled in-domain text.

TinyBERT replaces each word, with probability p, by one of its K most similar words: BERT's masked-LM guesses for
single-piece words, GloVe neighbours for the rest. Neither a masked-LM head nor GloVe ships with a fine-tuned
classifier, so the neighbours here come from the teacher's own input-embedding table: a word's vector is the mean of
its word pieces' rows, and its candidates are the K whole-word tokens with the highest cosine to it. The teacher then
labels every variant (logit KD only; the hard-label loss skips them), as with `--augment` text.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from ..data.corpora import load_corpus

log = logging.getLogger("lmcompress")

WORD = re.compile(r"^[^\W\d_]{2,}$")  # alphabetic words of 2+ letters are replaced; numbers, punctuation kept


def whole_word_tokens(tokenizer) -> tuple[list[str], list[int]]:
    """Vocabulary entries that are a whole word on their own (tokenising the word gives back exactly that token)
    -> (words, token ids)."""
    vocab = tokenizer.get_vocab()
    ids = sorted(i for i in vocab.values() if i not in set(tokenizer.all_special_ids))
    strings = [tokenizer.decode([i]).strip() for i in ids]
    candidates = [(s, i) for s, i in zip(strings, ids) if WORD.match(s)]
    encoded = tokenizer([s for s, _ in candidates], add_special_tokens=False)["input_ids"]
    kept = [(s, i) for (s, i), pieces in zip(candidates, encoded) if pieces == [i]]
    return [s for s, _ in kept], [i for _, i in kept]


class EmbeddingNeighbours:
    """Nearest whole words of a word in an input-embedding table (cosine), cached per word."""

    def __init__(self, tokenizer, embeddings: torch.Tensor, k: int = 15):
        self.tokenizer, self.k = tokenizer, k
        self.words, ids = whole_word_tokens(tokenizer)
        table = embeddings.detach().float()
        self.table = torch.nn.functional.normalize(table, dim=-1)  # [V, H]
        self.candidates = self.table[ids]  # [W, H]
        self.cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self.cache:
            pieces = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not pieces:
                self.cache[key] = []
            else:
                vector = torch.nn.functional.normalize(self.table[pieces].mean(0), dim=-1)  # [H]
                order = torch.argsort(self.candidates @ vector, descending=True)[: self.k + 1].tolist()
                self.cache[key] = [self.words[i] for i in order if self.words[i].lower() != key][: self.k]
        return self.cache[key]


def replace_words(text: str, neighbours, probability: float, rng: np.random.Generator) -> str:
    """One variant: every alphabetic word, with `probability`, becomes a random one of its neighbours; the spacing
    and everything else stay as they were."""
    parts = re.split(r"(\s+)", text)
    for i, part in enumerate(parts):
        if WORD.match(part) and rng.random() < probability:
            options = neighbours(part)
            if options:
                parts[i] = options[int(rng.integers(len(options)))]
    return "".join(parts)


def word_replaced_texts(texts: list[str], neighbours, variants: int, probability: float, seed: int) -> list[str]:
    """`variants` replaced copies of every text (seeded), without repeats and without the originals."""
    rng = np.random.default_rng(seed)
    originals = set(texts)
    seen: set[str] = set()
    out = []
    for text in texts:
        for _ in range(variants):
            variant = replace_words(text, neighbours, probability, rng)
            if variant not in originals and variant not in seen:
                seen.add(variant)
                out.append(variant)
    return out


SPAN_SHARE = (0.4, 0.8)  # a span keeps this share of its text's words
SPAN_MIN_WORDS = 3
SPAN_SOURCE_MIN_WORDS = 5  # shorter texts give no spans


def word_spans(texts: list[str], variants: int, seed: int) -> list[str]:
    """`variants` contiguous word spans of every text of 5 or more words, each 40-80% of its words (at least 3):
    phrases of the texts, as SST's annotators labelled phrases of their reviews, for the teacher to label. Drawn
    round by round (one span of every text, then a second of every text...), so the first N are spread over all
    texts; seeded, without repeats and without the originals."""
    rng = np.random.default_rng(seed)
    originals = set(texts)
    seen: set[str] = set()
    out = []
    for _ in range(variants):
        for text in texts:
            words = text.split()
            if len(words) < SPAN_SOURCE_MIN_WORDS:
                continue
            shortest = max(SPAN_MIN_WORDS, int(SPAN_SHARE[0] * len(words)))
            length = int(rng.integers(shortest, max(shortest, int(SPAN_SHARE[1] * len(words))) + 1))
            start = int(rng.integers(0, len(words) - length + 1))
            span = " ".join(words[start:start + length])
            if span not in originals and span not in seen:
                seen.add(span)
                out.append(span)
    return out


def held_out_texts(task_data) -> set[str]:
    """The validation and test texts: augmentation rows equal to one are dropped, so nothing held out leaks in."""
    return {str(t).strip() for split in ("validation", "test") for t in task_data.splits[split]["text"]}


def corpus_texts(source: str) -> list[str]:
    """The documents of `source` (a text file, folder, table or zoo corpus: `--augment`) as one text each."""
    documents, _ = load_corpus(source)
    return [" ".join(document).strip() for document in documents]


def without_held_out(texts: list[str], held_out: set[str]) -> tuple[list[str], int]:
    """`texts` without empty ones and those equal to a held-out row -> (texts kept, how many were held out)."""
    kept = [t for t in texts if t and t.strip() not in held_out]
    return kept, sum(1 for t in texts if t and t.strip() in held_out)
