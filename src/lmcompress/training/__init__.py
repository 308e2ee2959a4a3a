"""The training loop (`fit`) and its pieces: checkpoints and RNG state, signals, logs, sample order."""

from .loop import FitResult, fit, make_optimizer, resolve_precision

__all__ = ["FitResult", "fit", "make_optimizer", "resolve_precision"]
