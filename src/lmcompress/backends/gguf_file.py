"""GGUF files (llama.cpp, Ollama, LM Studio) of Llama-family causal LMs, written with the `gguf` package's writer and
read back with transformers' GGUF loader to validate them.

Names follow the gguf package's tensor map; the query and key rows are permuted the way llama.cpp's converter does
(its rotary kernels pair a head's dims differently from transformers), which transformers' loader undoes. The
tokenizer goes in too (byte-level BPE: tokens, types, merges, special ids), so the file runs on its own.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import LmcError

GGUF_FILE = "model.gguf"
GGUF_ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA"}  # model_type -> gguf MODEL_ARCH (one arch "llama")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # gguf TokenType values


def require_gguf():
    if importlib.util.find_spec("gguf") is None:
        raise LmcError("writing a .gguf file needs the gguf package: pip install gguf")
    import gguf

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


def write_gguf(model, tokenizer, path: Path, precision: str, name: str, pre: str = "default") -> None:
    """model (LlamaForCausalLM) -> a GGUF file at `path`: fp32 or fp16 matrices, fp32 norms (llama.cpp's rule)."""
    gguf = require_gguf()
    config = model.config
    check_architecture(config)
    check_tokenizer(tokenizer)
    arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHITECTURES[config.model_type])
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _add_config(writer, config, name, gguf.LlamaFileType.MOSTLY_F16 if precision == "fp16" else
                gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(gguf, writer, tokenizer, config.vocab_size, pre)
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
        array = value.numpy()
        writer.add_tensor(gguf_name, array.astype(np.float16) if precision == "fp16" and array.ndim > 1 else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_gguf(path: Path):
    """(model, tokenizer) read back from a GGUF file by transformers alone."""
    folder, extra = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **extra).eval(), AutoTokenizer.from_pretrained(
            folder, **extra)
    except Exception as exc:
        raise LmcError(f"the written GGUF does not load back in transformers: {str(exc).splitlines()[0]}") from None
