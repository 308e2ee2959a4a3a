"""llama.cpp itself, through llama-cpp-python: what people run GGUF files with.

An optional extra (`bash scripts/setup.sh --with-llama-cpp`, or `pip install -e ".[llama-cpp]"`), which builds
llama.cpp from source with this machine's compiler; nothing needs it. With it, `export --format gguf` checks the
file's perplexity as llama.cpp computes it against transformers' reading of the same file, and `evaluate` on a GGUF
run times llama.cpp's generation beside PyTorch's.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LmcError
from ..timing import quartiles

log = logging.getLogger("lmcompress")
HOW_TO_ADD = ("add it with `bash scripts/setup.sh --with-llama-cpp` (builds llama-cpp-python from source, about 10 "
              "minutes on 2 cores)")
INSTALL_HINT = f"llama.cpp is not installed, so it did not check the file: {HOW_TO_ADD}"


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
    """A llama.cpp context on the file of `context` positions (0: every position the model was trained with):
    `all_logits` keeps the logits of every position (for perplexity), else only what generation needs."""
    if not available():
        raise LmcError(INSTALL_HINT)
    from llama_cpp import Llama

    with _quiet_native_output():
        try:
            model = Llama(model_path=str(path), n_ctx=context, n_batch=min(context or 512, 512), n_threads=threads,
                          n_threads_batch=threads, logits_all=all_logits, verbose=False)
        except ValueError as exc:
            raise LmcError(f"llama.cpp cannot load {path}: {exc}") from None
    # closed before the interpreter tears down the modules its destructor needs (else a traceback at exit)
    alive = weakref.ref(model)
    atexit.register(lambda: (left := alive()) is not None and left.close())
    return model


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


def positions(model) -> int:
    """Tokens a llama.cpp context holds: llama-cpp-python's token buffer, the size asked for (llama.cpp itself rounds
    its context up to a multiple of 256, which `n_ctx()` reports but the buffer does not hold)."""
    return len(model.input_ids)


def parameters(model) -> int:
    """The parameters of the model a llama.cpp context runs."""
    import llama_cpp

    return int(llama_cpp.llama_model_n_params(model.model))


def end_tokens(model) -> frozenset[int]:
    """The end-of-generation tokens of the file's vocabulary: end of text, and of a turn (<|im_end|>, <|eot_id|>)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model.model)
    return frozenset(t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))


def _greedy(model, ids: list[int], limit: int, stops: frozenset[int] = frozenset()) -> list[int]:
    """Up to `limit` greedy tokens after `ids`, ending before any of `stops`."""
    made: list[int] = []
    for token in model.generate(ids, top_k=1, temp=0.0, reset=True):
        if token in stops:
            break
        made.append(token)
        if len(made) == limit:
            break
    return made


def complete(model, prompt: str, max_new_tokens: int, stops: frozenset[int]) -> str:
    """Greedy continuation of `prompt` (tokenised by the file's own vocabulary) up to `max_new_tokens` tokens or
    one of `stops` (`end_tokens`), decoded as text that follows the prompt (its leading space kept)."""
    if max_new_tokens < 1:
        raise LmcError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = model.tokenize(prompt.encode("utf-8"), add_bos=True)
    if not ids or (len(ids) == 1 and ids[0] == model.token_bos()):
        raise LmcError("the prompt is empty after tokenisation")
    if len(ids) + max_new_tokens > positions(model):
        raise LmcError(f"the prompt has {len(ids)} tokens; with max_new_tokens {max_new_tokens} that passes the "
                       f"model's {positions(model)} positions: shorten the prompt or ask for fewer tokens")
    made = _greedy(model, ids, max_new_tokens, stops)
    # the whole sequence decoded, then the prompt's bytes cut off: decoding the new tokens alone would drop a
    # SentencePiece vocabulary's leading space, and a character split across the two parts would be lost
    whole, prefix = model.detokenize(ids + made), model.detokenize(ids)
    return whole[len(prefix):].decode("utf-8", errors="replace")


def decode_timer(model) -> tuple[int, float]:
    """llama.cpp's own count and milliseconds of single-token decodes since its counters were last reset: the
    forward passes alone, without the sampling and the Python around them (what llama-bench's `tg` reports)."""
    import llama_cpp

    data = llama_cpp.llama_perf_context(model.ctx)
    return int(data.n_eval), float(data.t_eval_ms)


def generator(model, prompt: Sequence[int], decode_times: list[tuple[int, float]] | None = None
              ) -> Callable[[int], Callable[[], object]]:
    """For `measure.generation_speed`: `new_tokens` -> one greedy generation from `prompt`, the prompt evaluated
    afresh each time (llama-cpp-python would otherwise reuse the cached prefix and skip the prompt's pass).
    `decode_times` (optional) collects llama.cpp's own timer of each call (`decode_timer`)."""
    if decode_times is not None:  # resolved once, outside the timed calls
        from llama_cpp import llama_perf_context_reset

    def make(new_tokens: int) -> Callable[[], object]:
        if len(prompt) + new_tokens > positions(model):
            raise ValueError(f"{len(prompt)} prompt + {new_tokens} new tokens exceed the context of {positions(model)}")

        def call() -> list[int]:
            model.reset()
            if decode_times is not None:
                llama_perf_context_reset(model.ctx)
            made = _greedy(model, list(prompt), new_tokens)
            if decode_times is not None:
                decode_times.append(decode_timer(model))
            return made
        return call
    return make


def timer_rate(decode_times: list[tuple[int, float]]) -> dict[str, Any] | None:
    """Median decode tokens/s (and interquartile range) by llama.cpp's own timer over the calls that decoded, the
    first (the warm-up of `generation_speed`) left out."""
    rates = [n * 1000.0 / ms for n, ms in decode_times if n and ms > 0][1:]
    if not rates:
        return None
    q1, median, q3 = quartiles(rates)
    return {"decode_tokens_per_s": round(median, 1), "decode_iqr": [round(q1, 1), round(q3, 1)],
            "per_call": [round(r, 1) for r in rates]}
