"""llama.cpp itself, through llama-cpp-python: what people run GGUF files with.

An optional extra (`bash scripts/setup.sh --with-llama-cpp`, or `pip install -e ".[llama-cpp]"`), which builds
llama.cpp from source with this machine's compiler; nothing needs it. With it, `export --format gguf` checks the
file's perplexity as llama.cpp computes it against transformers' reading of the same file, and `evaluate` on a GGUF
run times llama.cpp's generation beside PyTorch's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import LmcError

log = logging.getLogger("lmcompress")
INSTALL_HINT = ("llama.cpp is not installed, so it did not check the file: add it with `bash scripts/setup.sh "
                "--with-llama-cpp` (builds llama-cpp-python from source, about 10 minutes on 2 cores)")


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str:
    import llama_cpp

    return llama_cpp.__version__


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """llama.cpp prints its model loading to the C stderr even with verbose=False; hidden unless --debug."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_model(path: Path, context: int, threads: int, all_logits: bool = False):
    """A llama.cpp context on the file: `all_logits` keeps the logits of every position (for perplexity), else only
    what generation needs."""
    if not available():
        raise LmcError(INSTALL_HINT)
    from llama_cpp import Llama

    with _quiet_native_output():
        try:
            return Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads,
                         n_threads_batch=threads, logits_all=all_logits, verbose=False)
        except ValueError as exc:
            raise LmcError(f"llama.cpp cannot load {path}: {exc}") from None


def perplexity(model, blocks: Sequence[Sequence[int]]) -> dict[str, float]:
    """Token-weighted next-token perplexity of `blocks` (token ids) from llama.cpp's logits, each block from an empty
    context, as `runkinds.lm.score_lm` scores them."""
    nll, tokens = 0.0, 0
    for ids in blocks:
        model.reset()
        model.eval(list(ids))
        for t in range(len(ids) - 1):  # position t predicts token t + 1; a row at a time keeps memory flat
            row = np.asarray(model.scores[t], dtype=np.float64)
            top = row.max()
            nll += float(top + np.log(np.exp(row - top).sum()) - row[ids[t + 1]])
        tokens += len(ids) - 1
    loss = nll / max(1, tokens)
    return {"perplexity": float(np.exp(min(loss, 50.0))), "loss": loss, "tokens": tokens}


def generator(model, prompt: Sequence[int]) -> Callable[[int], Callable[[], object]]:
    """For `measure.generation_speed`: `new_tokens` -> one greedy generation from `prompt`, the prompt evaluated
    afresh each time (llama-cpp-python would otherwise reuse the cached prefix and skip the prompt's pass)."""
    def make(new_tokens: int) -> Callable[[], object]:
        if len(prompt) + new_tokens > model.n_ctx():
            raise ValueError(f"{len(prompt)} prompt + {new_tokens} new tokens exceed the context of {model.n_ctx()}")

        def call() -> list[int]:
            model.reset()
            made = []
            for token in model.generate(list(prompt), top_k=1, temp=0.0, reset=True):
                made.append(token)
                if len(made) == new_tokens:
                    break
            return made
        return call
    return make
