"""Masked-LM corruption as pure numpy functions (BERT's recipe, with whole-word and n-gram options).

Selection (`choose_masked_positions`) follows BERT's create_masked_lm_predictions: the number of predictions is
round(mask_prob x maskable tokens) (at least 1); candidate units are whole words (a word is a token whose
`word_starts` flag is 1 plus the following 0-flagged tokens: WordPiece's ## pieces, or the characters of one
jieba word in Chinese) or single tokens; units are visited in random order and a unit that would overshoot the
budget is skipped, so whole words stay whole. N-gram masking (ALBERT) picks n in 1..max_ngram with p ∝ 1/n and
masks n consecutive units. `corrupt` then applies 80% [MASK] / 10% random token / 10% unchanged.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # label of a position that is not predicted (PyTorch cross-entropy's ignore_index)


def word_units(word_starts: np.ndarray, maskable: np.ndarray, whole_word: bool) -> list[np.ndarray]:
    """word_starts [T] (1 = token starts a word), maskable [T] bool -> list of position arrays, one per unit."""
    positions = np.flatnonzero(maskable)
    if not whole_word or positions.size == 0:
        return [np.array([p]) for p in positions]
    units: list[list[int]] = []
    previous = -2
    for p in positions:
        # a unit continues while the token is not a word start and directly follows the previous maskable token
        if units and not word_starts[p] and p == previous + 1:
            units[-1].append(int(p))
        else:
            units.append([int(p)])
        previous = p
    return [np.array(u) for u in units]


def choose_masked_positions(word_starts: np.ndarray, maskable: np.ndarray, rng: np.random.Generator,
                            mask_prob: float = 0.15, whole_word: bool = True, max_ngram: int = 1) -> np.ndarray:
    """-> selected [T] bool: the positions to predict."""
    selected = np.zeros(maskable.shape, dtype=bool)
    units = word_units(word_starts, maskable, whole_word)
    if not units:
        return selected
    budget = max(1, int(round(int(maskable.sum()) * mask_prob)))
    ngram_p = 1.0 / np.arange(1, max_ngram + 1)
    ngram_p /= ngram_p.sum()
    chosen = 0
    for start in rng.permutation(len(units)):
        if chosen >= budget:
            break
        n = int(rng.choice(max_ngram, p=ngram_p)) + 1 if max_ngram > 1 else 1
        span = units[start:start + n]
        # shorten the n-gram until it fits the budget (ALBERT), and never re-select a covered unit
        while span and chosen + sum(u.size for u in span) > budget:
            span = span[:-1]
        if not span or any(selected[u].any() for u in span):
            continue
        for unit in span:
            selected[unit] = True
            chosen += unit.size
    return selected


def corrupt(input_ids: np.ndarray, selected: np.ndarray, rng: np.random.Generator, mask_id: int,
            vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids [T], selected [T] bool -> (corrupted ids [T], labels [T] with IGNORE where not selected).
    Of the selected positions 80% become mask_id, 10% a uniformly random token, 10% keep their token."""
    labels = np.where(selected, input_ids, IGNORE).astype(np.int64)
    corrupted = input_ids.astype(np.int64, copy=True)
    draw = rng.random(input_ids.shape)
    corrupted[selected & (draw < 0.8)] = mask_id
    random_positions = selected & (draw >= 0.8) & (draw < 0.9)
    corrupted[random_positions] = rng.integers(0, vocab_size, size=int(random_positions.sum()))
    return corrupted, labels


def mask_example(input_ids: np.ndarray, word_starts: np.ndarray, maskable: np.ndarray, rng: np.random.Generator,
                 mask_id: int, vocab_size: int, mask_prob: float = 0.15, whole_word: bool = True,
                 max_ngram: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One example -> (corrupted ids [T], labels [T])."""
    selected = choose_masked_positions(word_starts, maskable, rng, mask_prob, whole_word, max_ngram)
    return corrupt(input_ids, selected, rng, mask_id, vocab_size)
