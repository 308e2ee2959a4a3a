"""The order of training examples: shuffled, or grouped by length; both drawn from (seed, epoch) so a resumed run
replays the same batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from transformers.trainer_pt_utils import get_length_grouped_indices

from ..config import TrainConfig


def example_lengths(data) -> list[int]:
    """Tokens per training example: a tokenised `datasets.Dataset` column, or each item's input_ids."""
    if hasattr(data, "column_names") and "input_ids" in data.column_names:
        return [len(ids) for ids in data["input_ids"]]
    examples = getattr(data, "examples", data)  # e.g. DynamicMasking wraps a list of examples
    return [len(examples[i]["input_ids"]) for i in range(len(examples))]


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """transformers' length-grouped batches (random mega-batches of 50 batches, each sorted by length), then the
    batches shuffled. transformers keeps each mega-batch in length order, so training walks from the longest rows to
    the shortest 50 batches at a time and ends an epoch on short ones; shuffling the finished batches keeps the
    padding saved and drops that drift. A short last batch stays last: the loader cuts the order every batch_size."""
    order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    full = len(order) // batch_size
    shuffled = torch.randperm(full, generator=generator).tolist()
    return [i for b in shuffled for i in order[b * batch_size:(b + 1) * batch_size]] + order[full * batch_size:]


class LengthGroupedEpochSampler(torch.utils.data.Sampler):
    """Length-grouped batches in a shuffled order (`length_grouped_order`), drawn from (seed, epoch) so that a resumed
    run replays the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(length_grouped_order(self.lengths, self.batch_size, generator))

    def __len__(self) -> int:
        return len(self.lengths)


def make_loader(train_data: Dataset, collate, cfg: TrainConfig) -> DataLoader:
    """Batches of the training data in a seeded order (length-grouped with --group-by-length)."""
    # a generator even for the length-grouped order: without one the loader draws its worker seed from the global
    # RNG, which would shift dropout between a straight run and a resumed one
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.group_by_length:
        sampler = LengthGroupedEpochSampler(example_lengths(train_data), cfg.batch_size, cfg.seed)
        return DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          generator=generator)
    return DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator)
