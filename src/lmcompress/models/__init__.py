"""Models: presets (architectures), load (spec -> tokenizer + model with head), outputs (one adaptor)."""

from .outputs import ModelOutputs, forward

__all__ = ["ModelOutputs", "forward"]
