"""Using a compressed model: one predictor for every run format (`load`), the HTTP app that serves it with dynamic
batching (`app`, `batching`)."""

from .predictor import ModelCard, Predictor, load

__all__ = ["ModelCard", "Predictor", "load"]
