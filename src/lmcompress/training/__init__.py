"""The training loop (`fit`) and its pieces: checkpoints and RNG state, signals, logs, sample order."""

from .loop import FitResult, fit, make_optimizer, resolve_precision
from .samplers import BatchOrder

__all__ = ["BatchOrder", "FitResult", "fit", "make_optimizer", "resolve_precision"]
