"""`lmcompress export --format gguf`: a Llama-family causal LM run as one GGUF file for llama.cpp (fp32, fp16, or
llama.cpp's q8_0 / q4_0 / q4_m block quantisation), validated by reading it back with transformers' GGUF loader on the
run's own validation blocks (real text): fp32/fp16 by their logits, the others by their perplexity beside PyTorch's; above
the tolerance nothing is written. The file's perplexity is scored from the file, not copied."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForCausalLM

from ..backends import gguf_file, gguf_quants, llama_cpp
from ..config import ExportConfig, to_dict
from ..errors import LmcError
from ..measure import count_params
from ..models.load import load_tokenizer
from ..data.pretraining import collator
from ..runkinds.lm import llama_cpp_perplexity, run_validation_set, score_lm
from ..runs.manifest import Manifest, TaskRecord, read_manifest, stage_manifest
from ..runs.rundir import RunDir, finish_stage

log = logging.getLogger("lmcompress")

# fp32/fp16: max |logit difference| over a 49k-token vocabulary (fp16 weights move large logits by ~0.1-0.2);
# q8_0/q4_0/q4_m: max relative perplexity increase over the validation blocks (block quantisation moves every logit)
GGUF_TOLERANCE = {"fp32": 1e-3, "fp16": 0.5, "q8_0": 0.05, "q4_0": 0.5, "q4_m": 0.5}
QUANTISED = ("q8_0", "q4_0", "q4_m")
# --rounding auto: on the 12-layer smollm2-135m student GPTQ took q4_0 to +2.8% perplexity over fp16 in llama.cpp
# (the importance search alone: +10.9%); on the 16-layer one the importance search moved q4_m from +7.0% to +7.8%, so
# q4_m rounds plainly unless told (docs/stages.md)
DEFAULT_ROUNDING = {"q4_0": "gptq", "q4_m": "plain"}
CALIBRATION_BLOCKS = 64  # training blocks whose activations weigh the rounding, by default
LLAMA_CPP_TOLERANCE = 0.05  # llama.cpp's perplexity of the file vs transformers' reading of it, relative
CHECK_BLOCKS = 8  # validation blocks whose logits are compared


def _source(cfg: ExportConfig) -> tuple[Path, Manifest]:
    """The run to export, checked before any slow work -> (folder, manifest)."""
    source = Path(cfg.model).expanduser()
    if not (source / "config.json").is_file():
        raise LmcError(f"--model {cfg.model} is not a run directory or Hugging Face checkpoint (no config.json)")
    gguf_file.require_gguf()
    gguf_file.check_architecture(AutoConfig.from_pretrained(str(source), local_files_only=True))
    gguf_file.check_tokenizer(load_tokenizer(source))
    manifest = read_manifest(source)
    if manifest.task_type != "clm":
        raise LmcError(f"--format gguf exports causal-LM runs (pretrain --objective clm, distill-lm, prune-lm); "
                       f"{cfg.model} is not one (its validation blocks check the file)")
    return source, manifest


def _tokenizer_pre(manifest: Manifest, depth: int = 8) -> str:
    """llama.cpp's pre-tokenizer name: that of the .gguf file the run descends from (a student distilled or pruned
    from one shares its tokenizer; parents are followed through their run manifests), else 'default'."""
    parent = Path(str(manifest.parent or ""))
    if parent.suffix == ".gguf" and parent.is_file():
        field = gguf_file.require_gguf().GGUFReader(str(parent)).fields.get("tokenizer.ggml.pre")
        return field.contents() if field is not None else "default"
    upstream = read_manifest(parent) if manifest.parent and depth and parent.is_dir() else None
    return _tokenizer_pre(upstream, depth - 1) if upstream is not None and upstream.is_run else "default"


@torch.inference_mode()
def logit_agreement(model, loaded, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |logit difference| and argmax agreement at the real tokens of `batch`."""
    mask = batch["attention_mask"].bool()
    a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
    b = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
    return {"max_abs_logit_diff": float((a - b).abs().max()), "max_abs_logit": float(a.abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()), "tokens": int(mask.sum())}


def _check_logits(validation: dict[str, Any], tolerance: float) -> None:
    """fp32 and fp16 files: the logits read back must match PyTorch's within `tolerance`."""
    log.info("GGUF read back by transformers: max |logit diff| %.2e over %d tokens (tolerance %.0e), argmax "
             "agreement %.4f", validation["max_abs_logit_diff"], validation["tokens"], tolerance,
             validation["argmax_agreement"])
    if not validation["max_abs_logit_diff"] <= tolerance:
        raise LmcError(f"the GGUF file's logits differ from PyTorch's by {validation['max_abs_logit_diff']:.3g} "
                       f"> tolerance {tolerance:g}; nothing was written")


def _perplexity_check(model, file_scores: dict[str, float], blocks, collate, tolerance: float) -> dict[str, float]:
    """Block-quantised files: the file's perplexity on the validation blocks may exceed PyTorch's by at most
    `tolerance` (relative) -> both perplexities and the increase."""
    reference = score_lm(model, blocks, collate, "clm", 16)["perplexity"]
    increase = file_scores["perplexity"] / reference - 1
    log.info("GGUF read back by transformers: perplexity %.2f vs PyTorch %.2f (%+.2f%%, tolerance %+.1f%%)",
             file_scores["perplexity"], reference, 100 * increase, 100 * tolerance)
    if not increase <= tolerance:
        raise LmcError(f"the quantised GGUF file's perplexity is {100 * increase:.2f}% above PyTorch's "
                       f"({file_scores['perplexity']:.2f} vs {reference:.2f}) > tolerance {tolerance:g}; nothing was "
                       "written (a larger --tolerance accepts it; q8_0 keeps more)")
    return {"perplexity_pytorch": reference, "perplexity_file": file_scores["perplexity"],
            "perplexity_increase": increase}


def _llama_cpp_check(path: Path, blocks, file_perplexity: float) -> dict[str, Any]:
    """With llama.cpp installed: the file's perplexity as llama.cpp computes it must agree with transformers' reading
    of the same file within LLAMA_CPP_TOLERANCE (it runs fp16 attention caches and 8-bit activations against
    quantised weights, so not to the last digit) -> {"llama_cpp": ...}; without it, one line on adding it."""
    if not llama_cpp.available():
        log.info(llama_cpp.INSTALL_HINT)
        return {}
    scored = llama_cpp_perplexity(path, blocks)
    difference = scored["perplexity"] / file_perplexity - 1
    log.info("llama.cpp reads the file with perplexity %.2f (transformers: %.2f, %+.2f%%)", scored["perplexity"],
             file_perplexity, 100 * difference)
    if not abs(difference) <= LLAMA_CPP_TOLERANCE:
        raise LmcError(f"llama.cpp scores the GGUF file at perplexity {scored['perplexity']:.2f}, transformers at "
                       f"{file_perplexity:.2f} ({100 * difference:+.1f}%, more than {100 * LLAMA_CPP_TOLERANCE:.0f}%): "
                       "the two read it differently; nothing was written")
    return {"llama_cpp": {"perplexity": scored["perplexity"], "vs_transformers": difference,
                          "version": llama_cpp.version()}}


def rounding_method(cfg: ExportConfig) -> str:
    """plain, importance or gptq: --rounding, or the precision's default; plain where nothing is rounded to Q4_0
    (fp32, fp16, q8_0) or with --calibration-blocks 0. Options that contradict each other stop with one line."""
    if cfg.precision not in DEFAULT_ROUNDING:
        method = "plain"
    elif cfg.calibration_blocks == 0:
        if cfg.rounding in ("importance", "gptq"):
            raise LmcError(f"--rounding {cfg.rounding} weighs the rounding by calibration blocks: drop "
                           "--calibration-blocks 0 (or use --rounding plain)")
        method = "plain"
    else:
        method = DEFAULT_ROUNDING[cfg.precision] if cfg.rounding == "auto" else cfg.rounding
    if method == "plain" and cfg.calibration_blocks:
        raise LmcError(f"--calibration-blocks applies to --rounding importance or gptq; --precision {cfg.precision} "
                       "rounds plainly here (add --rounding importance or gptq)")
    return method


def calibration_blocks(cfg: ExportConfig) -> int:
    """--calibration-blocks, else CALIBRATION_BLOCKS."""
    return CALIBRATION_BLOCKS if cfg.calibration_blocks is None else cfg.calibration_blocks


def rounding_importance(cfg: ExportConfig, model, train_blocks, collate) -> dict | None:
    """4-bit files: what the rounding weighs, from the first --calibration-blocks training blocks (never the
    validation blocks the file is scored on): llama.cpp's importance matrix, or the inputs' second moments for GPTQ;
    None: plain rounding."""
    method = rounding_method(cfg)
    blocks = train_blocks[:calibration_blocks(cfg)]
    if method == "plain" or not blocks:
        return None
    log.info("4-bit rounding (%s) weighted by the activations of %d training blocks", method, len(blocks))
    return gguf_quants.column_importance(model, DataLoader(blocks, batch_size=8, collate_fn=collate),
                                         full=method == "gptq")


def rounding_record(tensor_types: dict[str, int], cfg: ExportConfig, train_blocks: int) -> dict[str, Any]:
    """How the file's Q4_0 blocks were rounded, by what write_gguf did (a file without Q4_0 matrices: plain)."""
    rounded = {method: tensor_types.pop(label) for method, label in gguf_file.ROUNDED_COUNTS.items()
               if label in tensor_types}
    if not rounded:
        return {"rounding": "plain"}
    (method, tensors), = rounded.items()
    return {"rounding": method, "rounded_tensors": tensors,
            "calibration_blocks": min(calibration_blocks(cfg), train_blocks)}


def export_gguf(cfg: ExportConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    run.check(cfg.overwrite, None)
    source, manifest = _source(cfg)
    rounding_method(cfg)  # contradicting rounding options stop before any slow work
    pcfg, tokenizer, data, corpus_source = run_validation_set(source)
    model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True).eval()
    tolerance = cfg.tolerance or GGUF_TOLERANCE[cfg.precision]
    collate = collator(tokenizer, "clm")
    pre = _tokenizer_pre(manifest)
    run.begin(cfg.overwrite, False)
    with run.guard():
        path = run.partial / gguf_file.GGUF_FILE
        tensor_types = gguf_file.write_gguf(model, tokenizer, path, cfg.precision, source.name, pre,
                                            rounding_importance(cfg, model, data.train, collate))
        rounding = rounding_record(tensor_types, cfg, len(data.train))
        loaded, loaded_tokenizer = gguf_file.load_gguf(path)
        if loaded_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise LmcError("the GGUF file's tokenizer reads back with another vocabulary; nothing was written")
        check = {k: v for k, v in collate(data.validation[:CHECK_BLOCKS]).items() if k != "labels"}
        validation = logit_agreement(model, loaded, check) | {"tolerance": tolerance, "blocks": CHECK_BLOCKS,
                                                             "tensor_types": tensor_types} | rounding
        scores = score_lm(loaded, data.validation, collate, "clm", 16)  # the file's own perplexity
        if cfg.precision in QUANTISED:
            validation |= _perplexity_check(model, scores, data.validation, collate, tolerance)
        else:
            _check_logits(validation, tolerance)
        validation |= _llama_cpp_check(path, data.validation, scores["perplexity"])
        tokenizer.save_pretrained(run.partial)  # evaluate and compare rebuild the validation set with it

        def write(folder: Path) -> dict[str, Any]:
            return {"task": "clm", "split": "validation", "metrics": scores, "main_metric": "perplexity",
                    "params": count_params(loaded), "size_bytes": path.stat().st_size,
                    "examples": len(data.validation), "validation_fingerprint": data.record["validation_fingerprint"]}

        return finish_stage(run, write, lambda metrics: stage_manifest(
            "export", str(source), to_dict(cfg), data={"source": corpus_source, **data.record},
            task=TaskRecord("clm", family=model.config.model_type), lm_config=to_dict(pcfg),
            export={"format": "gguf", "precision": cfg.precision, "file": gguf_file.GGUF_FILE,
                    "validation": validation, "tokenizer_pre": pre}))
