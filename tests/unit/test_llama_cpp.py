"""The llama.cpp backend's arithmetic and its use of llama-cpp-python's surface, on a stand-in that computes
logits with a tiny transformers model (llama.cpp itself is an optional extra; tests/integration runs it when
installed)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmcompress.backends import llama_cpp


class TorchAsLlama:
    """llama-cpp-python's `reset` / `eval` / `scores` / `generate` over a transformers model."""

    def __init__(self, model):
        self.model, self.scores, self.resets, self.context = model, None, 0, []
        self.input_ids = [0] * 64  # llama-cpp-python's token buffer: the positions it holds

    def reset(self):
        self.resets += 1
        self.context = []

    def eval(self, ids):
        self.context += list(ids)
        with torch.no_grad():
            self.scores = self.model(torch.tensor([self.context])).logits[0].numpy()

    def generate(self, tokens, top_k, temp, reset):
        assert (top_k, temp, reset) == (1, 0.0, True) and self.context == []  # greedy, from an empty context
        self.eval(tokens)
        while True:
            token = int(self.scores[-1].argmax())
            yield token
            self.eval([token])


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32)).eval()


def test_perplexity_is_the_token_weighted_next_token_loss(tiny_llama):
    blocks = [[1, 5, 7, 9, 3], [2, 4, 6]]
    nll, tokens = 0.0, 0
    for ids in blocks:
        with torch.no_grad():
            logits = tiny_llama(torch.tensor([ids])).logits[0]
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum"))
        tokens += len(ids) - 1
    stand_in = TorchAsLlama(tiny_llama)
    scored = llama_cpp.perplexity(stand_in, blocks)
    assert scored["tokens"] == 6 and stand_in.resets == 2  # each block from an empty context
    assert scored["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_generator_evaluates_the_prompt_afresh_and_makes_exactly_the_tokens_asked(tiny_llama):
    stand_in = TorchAsLlama(tiny_llama)
    prompt = [1, 5, 7]
    make = llama_cpp.generator(stand_in, prompt)
    first, again = make(4)(), make(4)()
    assert len(first) == 4 and first == again and stand_in.resets == 2
    expected = tiny_llama.generate(torch.tensor([prompt]), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                   pad_token_id=0)[0, 3:].tolist()
    assert first == expected  # greedy: the tokens transformers picks
    with pytest.raises(ValueError, match="exceed the context of 64"):
        make(62)


def test_without_llama_cpp_the_file_is_refused_with_how_to_add_it(monkeypatch, tmp_path):
    from lmcompress.errors import LmcError

    monkeypatch.setattr(llama_cpp, "available", lambda: False)
    with pytest.raises(LmcError, match="--with-llama-cpp"):
        llama_cpp.open_model(tmp_path / "model.gguf", 64, 1)


class TorchAsLlamaText(TorchAsLlama):
    """The stand-in with a vocabulary: byte b is token b % 38 + 2, token 0 the BOS."""

    def tokenize(self, text, add_bos):
        return [0] * add_bos + [b % 38 + 2 for b in text]

    def detokenize(self, ids):
        return bytes(ord("a") + i % 26 for i in ids if i != 0)

    def token_bos(self):
        return 0

    def generate(self, tokens, top_k, temp, reset):
        self.context = []  # reset=True: llama-cpp-python evaluates the new prompt after what it keeps of the last
        yield from super().generate(tokens, top_k, temp, reset)

    def token_eos(self):
        return self.eos


def test_complete_is_the_greedy_continuation_and_stops_at_the_end_of_text_token(tiny_llama):
    stand_in = TorchAsLlamaText(tiny_llama)
    prompt_ids = stand_in.tokenize(b"abc", add_bos=True)
    greedy = tiny_llama.generate(torch.tensor([prompt_ids]), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                 pad_token_id=0)[0, len(prompt_ids):].tolist()
    assert llama_cpp.complete(stand_in, "abc", 5, frozenset({1})) == stand_in.detokenize(greedy).decode()
    stop = next(i for i, token in enumerate(greedy) if token not in greedy[:i] and i > 0)
    # an end-of-generation token ends the answer, and is not part of it
    assert llama_cpp.complete(stand_in, "abc", 5, frozenset({greedy[stop]})) == stand_in.detokenize(
        greedy[:stop]).decode()


@pytest.mark.parametrize(("prompt", "new_tokens", "message"), [
    ("", 4, "empty after tokenisation"), ("abc", 0, "max_new_tokens must be >= 1"),
    ("x" * 60, 8, "the prompt has 61 tokens; with max_new_tokens 8 that passes the model's 64 positions")])
def test_complete_refuses_what_does_not_fit(tiny_llama, prompt, new_tokens, message):
    from lmcompress.errors import LmcError

    with pytest.raises(LmcError, match=message):
        llama_cpp.complete(TorchAsLlamaText(tiny_llama), prompt, new_tokens, frozenset({1}))


def test_timer_rate_is_the_median_over_the_decoding_calls_after_the_warm_up():
    times = [(31, 100.0), (0, 5.0), (31, 310.0), (0, 4.0), (31, 155.0), (31, 206.7)]  # (decodes, ms) per call
    rate = llama_cpp.timer_rate(times)
    assert rate["per_call"] == [100.0, 200.0, 150.0]  # the first decoding call (the warm-up) and prompt-only calls out
    assert rate["decode_tokens_per_s"] == 150.0 and rate["decode_iqr"] == [125.0, 175.0]
    assert llama_cpp.timer_rate([(0, 3.0), (31, 100.0)]) is None  # nothing after the warm-up
