"""`lmcompress export --format gguf`: a Llama-family causal LM run as one GGUF file for llama.cpp, validated by
reading it back with transformers' GGUF loader and comparing logits on the run's own validation blocks (real text);
above the tolerance nothing is written. The file's perplexity is re-scored from the file, not copied."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..backends import gguf_file
from ..config import ExportConfig, to_dict
from ..errors import LmcError
from ..measure import count_params
from ..models.load import load_tokenizer
from ..data.pretraining import collator
from ..runkinds.lm import run_validation_set, score_lm
from ..runs.manifest import Manifest, TaskRecord, read_manifest, stage_manifest
from ..runs.rundir import RunDir, finish_stage

log = logging.getLogger("lmcompress")

# max |logit difference| over a 49k-token vocabulary: fp16 weights move large logits by ~0.1-0.2
GGUF_TOLERANCE = {"fp32": 1e-3, "fp16": 0.5}
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


def export_gguf(cfg: ExportConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    run.check(cfg.overwrite, None)
    source, manifest = _source(cfg)
    pcfg, tokenizer, data, corpus_source = run_validation_set(source)
    model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True).eval()
    tolerance = cfg.tolerance or GGUF_TOLERANCE[cfg.precision]
    collate = collator(tokenizer, "clm")
    pre = _tokenizer_pre(manifest)
    run.begin(cfg.overwrite, False)
    with run.guard():
        path = run.partial / gguf_file.GGUF_FILE
        gguf_file.write_gguf(model, tokenizer, path, cfg.precision, source.name, pre)
        loaded, loaded_tokenizer = gguf_file.load_gguf(path)
        check = {k: v for k, v in collate(data.validation[:CHECK_BLOCKS]).items() if k != "labels"}
        validation = logit_agreement(model, loaded, check) | {"tolerance": tolerance, "blocks": CHECK_BLOCKS}
        log.info("GGUF read back by transformers: max |logit diff| %.2e over %d tokens (tolerance %.0e), argmax "
                 "agreement %.4f", validation["max_abs_logit_diff"], validation["tokens"], tolerance,
                 validation["argmax_agreement"])
        if not validation["max_abs_logit_diff"] <= tolerance:
            raise LmcError(f"the GGUF file's logits differ from PyTorch's by {validation['max_abs_logit_diff']:.3g} "
                           f"> tolerance {tolerance:g}; nothing was written")
        if loaded_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise LmcError("the GGUF file's tokenizer reads back with another vocabulary; nothing was written")
        tokenizer.save_pretrained(run.partial)  # evaluate and compare rebuild the validation set with it

        def write(folder: Path) -> dict[str, Any]:
            scores = score_lm(loaded, data.validation, collate, "clm", 16)
            return {"task": "clm", "split": "validation", "metrics": scores, "main_metric": "perplexity",
                    "params": count_params(loaded), "size_bytes": path.stat().st_size,
                    "examples": len(data.validation), "validation_fingerprint": data.record["validation_fingerprint"]}

        return finish_stage(run, write, lambda metrics: stage_manifest(
            "export", str(source), to_dict(cfg), data={"source": corpus_source, **data.record},
            task=TaskRecord("clm", family=model.config.model_type), lm_config=to_dict(pcfg),
            export={"format": "gguf", "precision": cfg.precision, "file": gguf_file.GGUF_FILE,
                    "validation": validation, "tokenizer_pre": pre}))
