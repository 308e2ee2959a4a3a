"""The stage registry (the pretrain, finetune and evaluate stages live in this package too): one entry per stage,
the single source of the CLI's subcommands, the Python API's functions
(`lmcompress.<stage>`, dashes as underscores), the recipe steps and `lmcompress.__all__`.

Entries name their runner as "module:function" and it is imported when the stage runs, so a command loads only its
own stage's modules (ONNX Runtime, model2vec and the like load only for the stages that use them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..config import (AutoConfig, CompareConfig, DistillConfig, EmbeddingDistillConfig, EvaluateConfig, ExportConfig,
                     FinetuneConfig, LMDistillConfig, PredictConfig, PretrainConfig, PruneConfig, PruneLMConfig,
                     QuantizeConfig, ServeConfig)
from ..runs.files import outputs_released


@dataclass(frozen=True)
class Stage:
    name: str  # the subcommand, e.g. "distill-lm"
    config: type  # its typed config dataclass: flags, YAML keys and recipe step keys are generated from it
    runner: str  # "module:function" taking the config and returning the result (metrics or report)
    help: str  # one line for `lmcompress --help` and the API function's docstring
    description: str  # the subcommand's --help text
    positional_runs: bool = False  # compare: run directories as positional arguments
    prints_own_summary: bool = False  # predict, serve: the CLI prints no metrics summary after them
    in_recipes: bool = True  # a recipe step (auto, predict and serve are not: they make no run directory of a chain)
    resumes: bool = False  # trains with checkpoints: re-running the same command continues an interrupted run
    makes: Literal["run", "report", "measurement"] = "run"  # what its --out holds once done (a recipe skips it then)

    @property
    def api_name(self) -> str:
        return self.name.replace("-", "_")

    def run(self, cfg: Any) -> dict[str, Any]:
        module, _, function = self.runner.partition(":")
        runner: Callable[[Any], dict[str, Any]] = getattr(importlib.import_module(module), function)
        with outputs_released():
            return runner(cfg)


STAGES: dict[str, Stage] = {stage.name: stage for stage in [
    Stage("pretrain", PretrainConfig, "lmcompress.stages.pretrain:pretrain",
          "self-supervised pre-training: MLM (+NSP/SOP) or causal LM on raw text",
          "Pre-train on raw text: masked LM with static or dynamic, whole-word (jieba for Chinese) or n-gram masking, "
          "with NSP (BERT) or SOP (ALBERT), or causal LM (GPT-2); optionally with a vocabulary trained on the "
          "corpus.", resumes=True),
    Stage("finetune", FinetuneConfig, "lmcompress.stages.finetune:finetune", "fine-tune a model on a labelled task",
          "Fine-tune a model (zoo name, HF dir or preset) for classification/regression.", resumes=True),
    Stage("distill", DistillConfig, "lmcompress.stages.distill:distill",
          "distil a fine-tuned teacher into a smaller student",
          "Task-specific distillation: logit KD with temperature mixed with hard labels, optional hidden-state / "
          "embedding / cosine / attention / MiniLM relation losses, teacher cache.", resumes=True),
    Stage("distill-lm", LMDistillConfig, "lmcompress.stages.distill_lm:distill_lm",
          "distil a language model on raw text: general (MLM) or causal-LM distillation",
          "Distillation over the vocabulary without labels: an encoder with an MLM head into a smaller encoder on "
          "masked text (general distillation), or a causal LM (smollm2-135m) into a GPT-2 student sharing its "
          "tokenizer; forward or reverse KL, optional top-k teacher cache, hidden-state / MiniLM relation losses.", resumes=True),
    Stage("distill-embeddings", EmbeddingDistillConfig, "lmcompress.stages.distill_embeddings:distill_embeddings",
          "distil a sentence-embedding model into a smaller bi-encoder",
          "Bi-encoder distillation: the student learns the teacher's mean-pooled sentence embeddings (MSE) on raw "
          "sentences; scored by the rank correlation of cosine similarities on held-aside sentence pairs.", resumes=True),
    Stage("compare", CompareConfig, "lmcompress.stages.compare:compare", "side-by-side report: metric, retention, size, latency",
          "Score and time every run on the same test rows in one process; write report.md, report.html, "
          "report.json and pareto.png.", positional_runs=True, makes="report"),
    Stage("prune", PruneConfig, "lmcompress.stages.prune:prune",
          "remove heads, FFN neurons or layers by importance, then recover",
          "Structured pruning: importance from |activation x gradient| on training rows, physical removal (a "
          "standard config that reloads with transformers alone), recovery by distillation from the unpruned model.",
          resumes=True),
    Stage("prune-lm", PruneLMConfig, "lmcompress.stages.prune_lm:prune_lm",
          "prune a causal LM in width and depth (Minitron-style), then recover by distillation",
          "Structured pruning of a causal LM (Llama family, GPT-2): query heads inside their KV groups, KV heads, FFN "
          "neurons and embedding channels by |activation x gradient| on corpus blocks, layers by 1 - cosine of their "
          "input and output; a standard checkpoint of the same family, recovered by top-k distill-lm from the "
          "unpruned model; --baseline trains the same shape from random init on the same blocks.", resumes=True),
    Stage("quantize", QuantizeConfig, "lmcompress.stages.quantize:quantize",
          "int8: PyTorch dynamic, ONNX Runtime dynamic or static",
          "Int8 quantization with the accuracy change and latency measured; ONNX methods export and validate first."),
    Stage("export", ExportConfig, "lmcompress.stages.export:export", "validated ONNX (fp32 or fp16), OpenVINO or GGUF export",
          "Export to ONNX with dynamic batch/sequence axes, validated against PyTorch on real padded batches."),
    Stage("evaluate", EvaluateConfig, "lmcompress.stages.evaluate:evaluate_run", "score a run: metrics, size, latency",
          "Evaluate a run on the same split it was trained with (or --data).", makes="measurement"),
    Stage("predict", PredictConfig, "lmcompress.stages.predict:predict",
          "a run's predictions for every row of a file (JSONL or CSV)",
          "Predict with any run (PyTorch, ONNX, OpenVINO, static, GGUF): labels and scores, entities, embeddings or "
          "generated text for every row of a CSV, TSV, JSONL, Parquet or text file, a folder of .txt files or "
          "standard input (-), written atomically to --out (.jsonl or .csv).", prints_own_summary=True,
          in_recipes=False),
    Stage("serve", ServeConfig, "lmcompress.stages.serve:serve",
          "serve a run over HTTP with dynamic batching (uvicorn, 127.0.0.1 by default)",
          "Serve any run behind POST /predict, GET /health, /metadata and /metrics on uvicorn: requests arriving "
          "together are batched (--max-batch, --max-wait-ms), limits answer 413/422 with a JSON error, SIGTERM "
          "finishes the requests in flight.", prints_own_summary=True, in_recipes=False),
    Stage("auto", AutoConfig, "lmcompress.search.run:auto",
          "state the target (retention, speedup or latency); get the smallest model that meets it",
          "Search for the student that meets --min-retention and --min-speedup (or --max-latency-ms) on this "
          "machine: time student shapes cut from the teacher (random weights), screen the promising ones by a short "
          "distillation, train the best with pruning + distillation + int8, and hand back the report and OUT/best. "
          "Re-running the same command continues the search.", in_recipes=False),
]}
