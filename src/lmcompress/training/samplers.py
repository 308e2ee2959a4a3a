"""The order of training examples: shuffled, or grouped by length; both drawn from (seed, epoch) so a resumed run
replays the same batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from ..config import TrainConfig


def example_lengths(data) -> list[int]:
    """Tokens per training example: a tokenised `datasets.Dataset` column, or each item's input_ids."""
    if hasattr(data, "column_names") and "input_ids" in data.column_names:
        return [len(ids) for ids in data["input_ids"]]
    examples = getattr(data, "examples", data)  # e.g. DynamicMasking wraps a list of examples
    return [len(examples[i]["input_ids"]) for i in range(len(examples))]


ORDER_STRIDE = 1_000_003
ORDER_SCHEME = f"seed*{ORDER_STRIDE}+epoch"  # recorded in checkpoints, so a resume can tell an older order


def order_seed(seed: int, epoch: int = 0) -> int:
    """The seed of an epoch's batch order. Spread apart so that runs at seeds N and N+1 share no epoch's order
    (with seed + epoch, accelerate's own scheme, seed N's second epoch would be seed N+1's first)."""
    return seed * ORDER_STRIDE + epoch


class LengthGroupedEpochSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order (random mega-batches, each sorted by length), drawn from (seed, epoch) so
    that a resumed run replays the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(order_seed(self.seed, self.epoch))
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    def __len__(self) -> int:
        return len(self.lengths)


# rows -> a sampler of row indices with set_epoch(epoch): another batch order (a benchmark replaying another
# library's order) in place of the shuffled or length-grouped one
BatchOrder = Callable[[int], Sampler]


def make_loader(train_data: Dataset, collate, cfg: TrainConfig, batch_order: BatchOrder | None = None) -> DataLoader:
    """Batches of the training data in a seeded order (length-grouped with --group-by-length), or in `batch_order`."""
    # a generator even for the length-grouped order: without one the loader draws its worker seed from the global
    # RNG, which would shift dropout between a straight run and a resumed one
    generator = torch.Generator().manual_seed(cfg.seed)
    if batch_order is not None:
        return DataLoader(train_data, batch_size=cfg.batch_size, sampler=batch_order(len(train_data)),
                          collate_fn=collate, generator=generator)
    if cfg.group_by_length:
        sampler = LengthGroupedEpochSampler(example_lengths(train_data), cfg.batch_size, cfg.seed)
        return DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          generator=generator)
    return DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator)
