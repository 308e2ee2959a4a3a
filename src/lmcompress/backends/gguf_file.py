"""GGUF files (llama.cpp, Ollama, LM Studio) of Llama-family causal LMs, written with the `gguf` package's writer and
read back with transformers' GGUF loader to validate them.

Names follow the gguf package's tensor map; the query and key rows are permuted the way llama.cpp's converter does
(its rotary kernels pair a head's dims differently from transformers), which transformers' loader undoes. The
tokenizer goes in too (byte-level BPE: tokens, types, merges, special ids), so the file runs on its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import tempfile
from unittest import mock
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import LmcError
from .gguf_quants import quantize_q4_0, quantize_q4_0_gptq

GGUF_FILE = "model.gguf"
ROUNDED_COUNTS = {"importance": "Q4_0 importance-weighted", "gptq": "Q4_0 GPTQ"}  # write_gguf's count of each rounding
GGUF_ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA"}  # model_type -> gguf MODEL_ARCH (one arch "llama")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # gguf TokenType values


def require_gguf():
    if importlib.util.find_spec("gguf") is None:
        raise LmcError("writing a .gguf file needs the gguf package: pip install gguf")
    import gguf
    import gguf.quants  # noqa: F401  (the block quantisers; not imported by `import gguf`)

    return gguf


def check_architecture(config) -> None:
    """What this writer covers, refused in one line otherwise: Llama/Mistral without biases or RoPE scaling (the
    writer would drop them, and transformers' loader, which the check reads the file with, ignores them too)."""
    if config.model_type not in GGUF_ARCHITECTURES:
        raise LmcError(f"--format gguf writes Llama-family causal LMs ({', '.join(GGUF_ARCHITECTURES)}), not "
                       f"{config.model_type}; export it with --format onnx")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise LmcError("--format gguf: this model has attention or MLP biases, which this writer does not carry; "
                       "export it with --format onnx")
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise LmcError(f"--format gguf: RoPE scaling '{rope.get('rope_type', rope.get('type'))}' is not written by "
                       "this writer; export it with --format onnx")


def check_tokenizer(tokenizer) -> None:
    """Byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen) is what the file's tokenizer fields describe; SentencePiece
    vocabularies (Llama 2, Mistral v0.1) would be read wrongly by llama.cpp."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("model", {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise LmcError("--format gguf writes byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3 style); this "
                       "model's tokenizer is another kind; export it with --format onnx")


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Q or K rows [heads * d, H] in llama.cpp's rotary layout (convert_hf_to_gguf's permute): within each head,
    the dims of the two rotary halves interleaved."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _add_config(writer, config, name: str, file_type: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)  # a pruned width need not be heads x head size
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _add_tokenizer(gguf, writer, tokenizer, vocab_size: int, pre: str) -> None:
    """Byte-level BPE vocabulary in id order (rows beyond the tokenizer as unused padding), types, merges, ids."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.get_added_vocab().values())
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(TOKEN_CONTROL if i in special else TOKEN_USER_DEFINED if i in added else TOKEN_NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads merges and special ids from tokenizer files
        tokenizer.save_pretrained(folder)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def tensor_type(gguf, gguf_name: str, shape: tuple[int, ...], precision: str, tied: bool = False):
    """The GGML type of one tensor in a file of `precision`, by llama.cpp's rules (llama-quantize): vectors (norms)
    stay F32; a matrix whose rows are not whole 32-value blocks stays F16; in a 4-bit file the output matrix (the
    token embedding when `tied`, as it then serves as the output) keeps more bits (OUTPUT_TYPES), where
    llama-quantize keeps Q6_K, or Q8_0 when a row is not whole 256-value super-blocks (the gguf package writes no
    K-quants); q4_m also keeps the matrices that Q4_K_M gives more bits (MORE_BITS) in Q8_0."""
    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or precision == "fp32":
        return types.F32
    if precision == "fp16" or shape[-1] % QUANT_BLOCK:
        return types.F16
    output = gguf_name.split(".")[0] == "output" or (tied and gguf_name.split(".")[0] == "token_embd")
    if output:
        return getattr(types, OUTPUT_TYPES[precision])
    if precision == "q8_0" or (precision == "q4_m" and gguf_name.endswith(MORE_BITS)):
        return types.Q8_0
    return types.Q4_0


QUANT_BLOCK = 32  # values per Q8_0 / Q4_0 / Q5_1 block, along a row
# the output matrix: 8 bits in q8_0 and q4_0 (as llama-quantize keeps it for SmolLM2); Q5_1 (6 bits, near Q6_K's 6.6) in
# q4_m, whose attention value and FFN down projections keep 8 bits, as Q4_K_M gives them more bits (in every layer
# here): on the pruned smollm2-135m student, +6.9% perplexity at 47.4 MB against q4_0's +15.2% at 51.8 MB
# (benchmarks/results/gguf_q4_mixes.md)
OUTPUT_TYPES = {"q8_0": "Q8_0", "q4_0": "Q8_0", "q4_m": "Q5_1"}
MORE_BITS = ("attn_v.weight", "ffn_down.weight")
FILE_TYPES = {"fp32": "ALL_F32", "fp16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
              "q4_m": "MOSTLY_Q4_0"}  # general.file_type


def write_gguf(model, tokenizer, path: Path, precision: str, name: str, pre: str = "default",
               importance: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """model (LlamaForCausalLM) -> a GGUF file at `path` with its matrices in `precision` (fp32, fp16, q8_0, q4_0, q4_m:
    `tensor_type`) -> the number of tensors of each GGML type. With `importance` (gguf_quants.column_importance), Q4_0
    matrices that have an entry are rounded by llama.cpp's importance-weighted search (a vector of column importances;
    counted again under "Q4_0 importance-weighted") or by GPTQ (a second-moment matrix; "Q4_0 GPTQ"); the others as
    plain llama-quantize rounds them."""
    gguf = require_gguf()
    config = model.config
    check_architecture(config)
    check_tokenizer(tokenizer)
    arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHITECTURES[config.model_type])
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _add_config(writer, config, name, getattr(gguf.LlamaFileType, FILE_TYPES[precision]))
    _add_tokenizer(gguf, writer, tokenizer, config.vocab_size, pre)
    counts: dict[str, int] = {}
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, value in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LmcError(f"--format gguf: no GGUF name for {hf_name}")
        value = value.detach().float()
        if hf_name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, config.num_key_value_heads)
        kind = tensor_type(gguf, gguf_name, tuple(value.shape), precision, tied)
        counts[kind.name] = counts.get(kind.name, 0) + 1
        array = value.numpy()
        if kind.name in ("F32", "F16"):
            writer.add_tensor(gguf_name, array.astype(np.float16 if kind.name == "F16" else np.float32))
        elif kind.name == "Q4_0" and hf_name in (importance or {}):  # (an embedding lookup has none: plain)
            gptq = importance[hf_name].ndim == 2
            quantized = quantize_q4_0_gptq(array, importance[hf_name]) if gptq else quantize_q4_0(
                array, importance[hf_name])
            writer.add_tensor(gguf_name, quantized, raw_dtype=kind)
            label = ROUNDED_COUNTS["gptq" if gptq else "importance"]
            counts[label] = counts.get(label, 0) + 1
        else:  # block-quantised bytes; the writer derives the logical shape from them
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def load_gguf(path: Path):
    """(model, tokenizer) read back from a GGUF file by transformers alone."""
    folder, extra = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    try:
        with _quiet_dequantising():
            model = AutoModelForCausalLM.from_pretrained(folder, **extra).eval()
        return model, AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as exc:
        raise LmcError(f"the written GGUF does not load back in transformers: {str(exc).splitlines()[0]}") from None


@contextlib.contextmanager
def _quiet_dequantising():
    """transformers' GGUF reader shows a plain tqdm bar per load, which its own progress-bar switch does not reach:
    silenced under --quiet."""
    if logging.getLogger("lmcompress").isEnabledFor(logging.INFO):
        yield
        return
    with mock.patch("transformers.modeling_gguf_pytorch_utils.tqdm", lambda items, **_: items, create=True):
        yield
