"""Typed configuration: one dataclass per concern, YAML <-> dataclass 1:1, CLI flags generated from the fields.

A YAML file and the CLI flags describe the same dataclasses, so a key in YAML is always a flag on the command line
(`max_length:` <-> `--max-length`). Unknown keys are rejected with the valid ones listed; wrong types and
out-of-range values fail in `__post_init__` with a `ValueError` that the loader turns into an `LmcError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import LmcError

RESUME_HELP = ("continue the interrupted run in --out (default: when it was started with the same options, so "
               "re-running a command continues it); --no-resume refuses to")

def _at_least(cfg: Any, minimum: int, *names: str) -> None:
    """ValueError for the first named field below `minimum` (None means unset and passes)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _positive(cfg: Any, *names: str) -> None:
    """ValueError for the first named field <= 0 (None means unset and passes)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _required(cfg: Any, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required (--{name.replace('_', '-')})")


# --------------------------------------------------------------------------------------------------------------
# Config dataclasses
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the examples come from and how they are split and tokenised."""

    data: str = field(default="", metadata={"help": "zoo name or path: CSV, TSV, JSONL, Parquet, text, or label folders"})
    text_column: str | None = field(default=None, metadata={"help": "column with the text (detected if omitted)"})
    encoding: str = field(default="utf-8", metadata={
        "help": "text encoding of CSV, TSV, JSONL, text, label-folder, CoNLL and SQuAD files: a codec (utf-8, "
                "latin-1, cp1252) or auto (detected per file)"})
    text_pair_column: str | None = field(default=None, metadata={"help": "second text column for pair tasks"})
    label_column: str | None = field(default=None, metadata={"help": "column with the label (detected if omitted)"})
    split_column: str | None = field(
        default=None, metadata={"help": "column holding train/validation/test per row (else a seeded split)"}
    )
    task: Literal["auto", "classification", "regression", "token-classification", "question-answering"] = field(
        default="auto", metadata={"help": "classification, regression, token-classification (NER) or "
                                          "question-answering (extractive, SQuAD format); auto: CoNLL / token JSONL "
                                          "-> token-classification, SQuAD JSON -> question-answering, float labels "
                                          "with fractions -> regression"}
    )
    max_length: int = field(default=128, metadata={"help": "tokens per example after truncation (question "
                                                           "answering: per window of question + context)"})
    doc_stride: int | None = field(default=None, metadata={
        "help": "question answering: tokens shared by consecutive windows over a long context (default: a quarter "
                "of --max-length)"})
    max_answer_length: int = field(default=30, metadata={
        "help": "question answering: longest answer span, in tokens, the decoder considers"})
    split_seed: int = field(default=42, metadata={"help": "seed of the stratified train/validation/test split"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of rows held out for validation"})
    test_fraction: float = field(default=0.1, metadata={"help": "share of rows held out for test"})
    max_train_examples: int | None = field(
        default=None, metadata={"help": "use only the first N training rows (quick runs); splits are unchanged"}
    )

    def __post_init__(self) -> None:
        _at_least(self, 8, "max_length")
        _at_least(self, 1, "doc_stride")
        _at_least(self, 1, "max_answer_length")
        if self.doc_stride is not None and self.doc_stride >= self.max_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be smaller than max_length ({self.max_length})")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"{name} must be between 0 and 0.5, got {value}")
        _at_least(self, 1, "max_train_examples")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training stage (one loop: `lmcompress.training`)."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the training data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step per device (before accumulation)"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    grad_accum_steps: int = field(default=1, metadata={"help": "batches accumulated per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "auto: bf16 where the hardware has bf16 kernels (a GPU that has it, a CPU "
                                          "with AMX or AVX512-BF16), else fp32"}
    )
    seed: int = field(default=42, metadata={"help": "seed for initialisation, shuffling and dropout"})
    checkpoint_every_steps: int = field(default=200, metadata={"help": "write a resumable checkpoint every N steps"})
    log_every_steps: int = field(default=20, metadata={"help": "log loss every N steps"})
    eval_every_steps: int | None = field(default=None, metadata={
        "help": "also evaluate every N steps (long epochs, e.g. pre-training); default: at each epoch's end"})
    keep_best: bool = field(default=True, metadata={"help": "keep the epoch with the best validation metric"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batch examples of similar length together (random mega-batches of 50 batches, sorted by length): "
                "less padding, so faster on short, uneven texts; the order is still shuffled each epoch"})
    nan_policy: Literal["stop", "skip"] = field(default="stop", metadata={
        "help": "on a NaN/inf loss: stop with an error, or skip the batch (up to --max-skipped-batches)"})
    max_skipped_batches: int = field(default=10, metadata={"help": "with --nan-policy skip: stop after this many"})

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "eval_batch_size", "grad_accum_steps", "checkpoint_every_steps",
                  "log_every_steps", "max_steps", "eval_every_steps")
        _at_least(self, 0, "max_skipped_batches")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("max_grad_norm and weight_decay must be >= 0")


@dataclass
class OutputOptions:
    """Where a stage writes its run directory, and whether it may replace a complete one there."""

    out: str = field(default="", metadata={"help": "run directory to create"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing complete run directory"})


@dataclass
class RunOptions(OutputOptions):
    """The run options of every training stage: OutputOptions, and what to do with an interrupted run."""

    resume: bool | None = field(default=None, metadata={"help": RESUME_HELP})


@dataclass
class MaskingOptions:
    """Masked-LM masking, shared by pretrain and distill-lm (mlm objectives)."""

    masking: Literal["dynamic", "static"] = field(default="dynamic", metadata={
        "help": "dynamic: a fresh mask each time an example is seen (RoBERTa); static: drawn once (BERT)"})
    mask_prob: float = field(default=0.15, metadata={"help": "share of tokens predicted (80% [MASK], 10% random, 10% kept)"})
    whole_word: bool = field(default=True, metadata={"help": "mask all pieces of a word together"})
    chinese_words: Literal["auto", "jieba", "off"] = field(default="auto", metadata={
        "help": "word boundaries for Chinese whole-word masking: jieba segmentation (auto: when the text is Chinese)"})
    max_ngram: int = field(default=1, metadata={"help": "n-gram masking up to n words, p ~ 1/n (ALBERT uses 3)"})

    def check_masking(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        _at_least(self, 1, "max_ngram")


@dataclass
class TeacherOptions:
    """How the teacher runs, shared by distill and distill-lm."""

    teacher_precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "the teacher's forward under bf16 autocast or in fp32; auto: bf16 where the hardware has bf16 kernels "
                "(a CPU with AMX or AVX512-BF16, a GPU that has it), as --precision auto"})
    fsdp: bool = field(default=False, metadata={
        "help": "under a launcher (torchrun, accelerate launch): shard the teacher's weights over the processes "
                "(FSDP) instead of a whole copy in each, for a teacher too large for one device"})


@dataclass
class FinetuneConfig(RunOptions):
    """`lmcompress finetune`: a model plus a task head trained on labelled data."""

    model: str = field(default="", metadata={"help": "zoo name, local HF directory, run dir or preset (bert-4l-312h)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer dir or zoo name (for presets)"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        if not self.data.data:
            raise ValueError("data is required (--data)")


@dataclass
class CorpusConfig:
    """Raw text for self-supervised pre-training, split by document into train and validation."""

    data: str = field(default="", metadata={
        "help": "zoo corpus (enwiki-sample, peoples-daily, fortunes-zh, fortunes, rotten-tomatoes) or a path: text "
                "file (blank line between documents), CSV/TSV/JSONL/Parquet (a document per row) or folder of .txt; "
                "several joined by commas"})
    text_column: str | None = field(default=None, metadata={"help": "column with the text (detected if omitted)"})
    max_length: int = field(default=128, metadata={"help": "tokens per training block or sentence pair"})
    split_seed: int = field(default=42, metadata={"help": "seed of the document-level train/validation split"})
    validation_fraction: float = field(default=0.05, metadata={"help": "share of documents held out for validation"})
    max_documents: int | None = field(default=None, metadata={"help": "use only the first N documents (quick runs)"})
    max_validation_examples: int = field(default=512, metadata={
        "help": "validation examples scored each epoch (a fixed, seeded masked set)"})
    num_proc: int | None = field(default=None, metadata={"help": "tokenisation processes (default: by corpus size)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "cache root of tokenised corpora and (distill-lm) teacher-outputs/ (default ~/.cache/lmcompress)"})

    def __post_init__(self) -> None:
        _at_least(self, 16, "max_length")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be between 0 and 0.5, got {self.validation_fraction}")
        _at_least(self, 2, "max_documents")
        _at_least(self, 1, "max_validation_examples", "num_proc")


@dataclass
class PretrainConfig(RunOptions, MaskingOptions):
    """`lmcompress pretrain`: self-supervised MLM (static/dynamic/whole-word/n-gram), NSP, SOP or causal LM."""

    model: str = field(default="", metadata={"help": "zoo name, local HF directory, run dir or preset (bert-4l-256h)"})
    objective: Literal["mlm", "mlm+nsp", "mlm+sop", "clm"] = field(default="mlm", metadata={
        "help": "mlm (RoBERTa), mlm+nsp (BERT), mlm+sop (ALBERT), clm (GPT-2)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer dir or zoo name (for presets)"})
    train_tokenizer: int | None = field(default=None, metadata={
        "help": "train a new vocabulary of this size on the corpus (presets only): WordPiece (character-level for "
                "Chinese) for BERT/ALBERT, byte-level BPE for GPT-2/RoBERTa"})
    short_seq_prob: float = field(default=0.1, metadata={"help": "NSP/SOP: share of pairs built shorter than max"})
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4, epochs=1.0, warmup_ratio=0.06))

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        if not self.data.data:
            raise ValueError("data is required (--data)")
        self.check_masking()
        if not 0.0 <= self.short_seq_prob < 1.0:
            raise ValueError(f"short_seq_prob must be in [0, 1), got {self.short_seq_prob}")
        _at_least(self, 100, "train_tokenizer")


@dataclass
class EvaluateConfig:
    """`lmcompress evaluate`: task metrics, size and latency of one run."""

    model: str = field(default="", metadata={"help": "run directory (or any HF directory with a task head)"})
    split: Literal["train", "validation", "test"] = field(default="test", metadata={"help": "which split to score"})
    out: str | None = field(default=None, metadata={"help": "write metrics.json here (default: into the run dir)"})
    latency: bool = field(default=True, metadata={"help": "measure CPU latency at batch 1 and 32"})
    latency_repeats: int = field(default=10, metadata={"help": "timed repeats per batch size (median reported)"})
    threads: int | None = field(default=None, metadata={"help": "torch threads for latency (default: all cores)"})
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _required(self, "model")
        _at_least(self, 1, "latency_repeats", "threads")


@dataclass
class DistillLossConfig:
    """Which distillation losses to use and how much each weighs (0 switches a loss off)."""

    temperature: float = field(default=4.0, metadata={"help": "softmax temperature of logit KD (loss scaled by T^2)"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the hard-label loss; 1 - alpha goes to logit KD"})
    kd_kind: Literal["kl", "ce"] = field(default="kl", metadata={"help": "KL divergence or soft cross-entropy"})
    hidden_weight: float = field(default=0.0, metadata={"help": "TinyBERT hidden-state MSE on mapped layers"})
    embedding_weight: float = field(default=0.0, metadata={"help": "MSE between embedding-layer outputs"})
    cosine_weight: float = field(default=0.0, metadata={"help": "DistilBERT cosine loss on mapped hidden states"})
    pooled_weight: float = field(default=0.0, metadata={
        "help": "MSE between the mean-pooled last hidden states (the student's through a learned projection): the "
                "one intermediate loss that works across tokenizers whose pieces differ"})
    attention_weight: float = field(default=0.0, metadata={"help": "TinyBERT attention-map loss (equal head counts)"})
    attention_kind: Literal["mse", "kl"] = field(default="kl", metadata={"help": "attention-map loss"})
    minilm_weight: float = field(default=0.0, metadata={"help": "MiniLM-v2 Q/K/V self-relation KL on the last layer"})
    relation_heads: int = field(default=12, metadata={"help": "MiniLM relation heads (must divide both widths)"})
    layer_map: str = field(default="auto", metadata={
        "help": "student->teacher layers: auto (copied layers, else uniform), uniform, last, or pairs '1:2,2:4'"})

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("hidden_weight", "embedding_weight", "cosine_weight", "pooled_weight", "attention_weight",
                     "minilm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _at_least(self, 1, "relation_heads")


def distill_training() -> TrainConfig:
    """Distillation's training defaults (the distill stage and the in-memory `distill_model`). Length-grouped
    batches: 1.5x faster on rotten-tomatoes at equal or better accuracy in four paired runs (docs/results.md,
    "Distillation vs TextBrewer")."""
    return TrainConfig(learning_rate=1e-4, epochs=5.0, group_by_length=True)


@dataclass
class DistillConfig(RunOptions, TeacherOptions):
    """`lmcompress distill`: train a student on a fine-tuned teacher's outputs (task-specific distillation)."""

    teacher: str = field(default="", metadata={"help": "fine-tuned teacher run (or HF dir with a task head)"})
    student: str = field(default="", metadata={
        "help": "preset (bert-4l-312h); a pre-trained donor (zoo name, model dir or Hub id: its own tokenizer is "
                "fine on sequence tasks), whole or cut ('minilm-l3;layers=2'); or derived from the teacher: "
                "'pick=0,2,4', 'layers=2;hidden=192', 'albert;embedding=128;shared' (ALBERT conversion)"})
    cache: bool = field(default=True, metadata={"help": "cache teacher outputs so later epochs skip the teacher"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "cache root: teacher outputs go to CACHE_DIR/teacher-outputs (default ~/.cache/lmcompress)"})
    augment: str | None = field(default=None, metadata={
        "help": "extra unlabelled in-domain text the teacher labels (TinyBERT-style augmentation; classification "
                "only): a text file, a folder of .txt, a table with a text column, or a zoo corpus; rows equal to a "
                "validation or test text are dropped"})
    augment_replace: int = field(default=0, metadata={
        "help": "TinyBERT word replacement: this many variants of every training text, each word replaced with "
                "probability --augment-replace-prob by one of its 15 nearest words in the teacher's input embeddings; "
                "the teacher labels them (classification only)"})
    augment_replace_prob: float = field(default=0.4, metadata={"help": "share of words replaced per variant"})
    augment_spans: int = field(default=0, metadata={
        "help": "this many word spans of every training text (40-80% of its words, phrases as SST labels them) for "
                "the teacher to label (classification only)"})
    max_augment_rows: int | None = field(default=None, metadata={"help": "use at most N augmentation rows"})
    intermediate_epochs: float = field(default=0.0, metadata={
        "help": "TinyBERT two-stage: first this many epochs on the intermediate-layer losses only, then --epochs on "
                "the prediction layer (logit KD + hard labels) only; 0: one stage with every loss"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=distill_training)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)

    def __post_init__(self) -> None:
        _required(self, "teacher", "student", "out")
        if self.intermediate_epochs < 0:
            raise ValueError(f"intermediate_epochs must be >= 0, got {self.intermediate_epochs}")
        _at_least(self, 1, "max_augment_rows")
        _at_least(self, 0, "augment_replace", "augment_spans")
        if not 0.0 < self.augment_replace_prob <= 1.0:
            raise ValueError(f"augment_replace_prob must be in (0, 1], got {self.augment_replace_prob}")


@dataclass
class LMDistillConfig(RunOptions, MaskingOptions, TeacherOptions):
    """`lmcompress distill-lm`: general (masked-LM) or causal-LM distillation on raw text, over the vocabulary."""

    teacher: str = field(default="", metadata={
        "help": "language model with its LM head: smollm2-135m (causal), a pretrain run, an HF dir or a .gguf file; "
                "minilm-l6 (no trained MLM head) only with --alpha 1 and intermediate losses (MiniLM/TinyBERT style)"})
    student: str = field(default="", metadata={
        "help": "preset sharing the teacher's tokenizer (gpt2-4l-256h, bert-4l-256h), a model dir, or derived from "
                "the teacher: 'layers=2', 'layers=3;hidden=192'"})
    objective: Literal["auto", "mlm", "clm"] = field(default="auto", metadata={
        "help": "mlm: general distillation of an encoder; clm: causal LM; auto: from the teacher's architecture"})
    kd_direction: Literal["forward", "reverse"] = field(default="forward", metadata={
        "help": "forward KL(teacher||student), mode-covering; reverse KL(student||teacher), mode-seeking (needs "
                "the exact teacher distribution, so no top-k cache)"})
    top_k: int = field(default=0, metadata={
        "help": "keep only the teacher's top-k vocabulary logits per token (renormalised) and cache them, so later "
                "epochs skip the teacher (kept under --cache-dir/teacher-outputs); 0: exact KD over the whole "
                "vocabulary, teacher run live"})
    sample_k: int = field(default=0, metadata={
        "help": "instead of the top-k: draw K tokens per position from the teacher's distribution at the temperature "
                "(with replacement, seeded per example) and cache them; the KD gradient stays unbiased, where top-k "
                "drops the tail (random-sampling KD, Anshumann et al. 2025)"})
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=5e-4, epochs=1.0, warmup_ratio=0.06))
    loss: DistillLossConfig = field(default_factory=lambda: DistillLossConfig(temperature=1.0, alpha=0.0))

    def __post_init__(self) -> None:
        _required(self, "teacher", "student", "out")
        if not self.data.data:
            raise ValueError("data is required (--data)")
        self.check_masking()
        _at_least(self, 0, "top_k", "sample_k")
        if self.top_k and self.sample_k:
            raise ValueError("choose one sparse teacher: --top-k or --sample-k")
        if (self.top_k or self.sample_k) and self.kd_direction == "reverse":
            raise ValueError("reverse KL needs the teacher's whole distribution: use --top-k 0 and --sample-k 0 with "
                             "--kd-direction reverse")


@dataclass
class EmbeddingDistillConfig(RunOptions):
    """`lmcompress distill-embeddings`: a bi-encoder student learns a sentence-embedding teacher's embeddings."""

    teacher: str = field(default="", metadata={
        "help": "sentence-embedding encoder (mean pooling): minilm-l6, or an HF model folder"})
    student: str = field(default="", metadata={
        "help": "derived from the teacher ('layers=2', 'layers=2;hidden=192'), a preset (bert-2l-384h, the "
                "teacher's tokenizer) or an encoder folder (its own tokenizer is fine: each side reads the text)"})
    min_sentence_chars: int = field(default=20, metadata={"help": "skip shorter sentences (headings, list debris)"})
    data: CorpusConfig = field(default_factory=lambda: CorpusConfig(max_length=64, max_validation_examples=2000))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4, epochs=1.0))

    def __post_init__(self) -> None:
        _required(self, "teacher", "student", "out")
        if not self.data.data:
            raise ValueError("data is required (--data)")
        _at_least(self, 1, "min_sentence_chars")


@dataclass
class CompareConfig:
    """`lmcompress compare`: every run scored and timed on the same test rows, in one process."""

    runs: list[str] = field(default_factory=list, metadata={"help": "run directories (the first is the teacher)"})
    out: str = field(default="", metadata={"help": "folder for report.md/html/json and pareto.png"})
    teacher: str | None = field(default=None, metadata={"help": "which run is the reference (default: the first)"})
    names: str | None = field(default=None, metadata={
        "help": "comma-separated row names, one per run in the order given (default: the folders' names)"})
    # 40: two reports over the same models agreed within 15% on shared 2-core machines only from 40 rounds on
    # (benchmarks/compare_stability.py: 10 rounds 19.7%, 20 rounds 15.1%, 40 rounds 13.5-13.6%)
    latency_repeats: int = field(default=40, metadata={
        "help": "timed rounds per batch size, 3x as many at batch 1 (median reported)"})
    threads: int | None = field(default=None, metadata={"help": "torch threads for every timing (default: all cores)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing report folder"})
    baseline: Literal["none", "tfidf"] = field(default="none", metadata={
        "help": "add a reference row: tfidf = TF-IDF + logistic regression fitted on the same training rows"})
    backends: Literal["run", "auto"] = field(default="run", metadata={
        "help": "run: each model on the runtime its run dir holds; auto: each PyTorch model also exported to ONNX "
                "Runtime and OpenVINO (and bf16 where the CPU has it), all timed side by side, each row showing "
                "its fastest backend and speedups taken against the teacher on PyTorch fp32"})
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run to compare")
        _required(self, "out")
        _at_least(self, 1, "latency_repeats", "threads")
        if self.names is not None:
            names = self.row_names()
            if len(names) != len(self.runs) or not all(names) or len(set(names)) < len(names):
                raise ValueError(f"--names needs {len(self.runs)} distinct non-empty names, one per run; got "
                                 f"{self.names!r}")

    def row_names(self) -> list[str] | None:
        """The names given with --names, in run order (None: name the rows after their folders)."""
        return None if self.names is None else [name.strip() for name in self.names.split(",")]


@dataclass
class PruneConfig(RunOptions):
    """`lmcompress prune`: data-driven structured pruning, then recovery by distillation from the unpruned model."""

    model: str = field(default="", metadata={
        "help": "fine-tuned run to prune (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa-v2, MPNet, DistilBERT, ModernBERT)"})
    heads: float = field(default=0.0, metadata={
        "help": "share of attention heads to remove in every layer (0-<1); BERT configs tie hidden = heads x head "
                "size, so the hidden width shrinks with them unless --hidden says otherwise"})
    ffn: float = field(default=0.0, metadata={"help": "share of FFN neurons to remove in every layer (0-<1)"})
    layers: int | None = field(default=None, metadata={"help": "keep only the N most important layers"})
    hidden: int | None = field(default=None, metadata={"help": "hidden width to keep (a multiple of the kept heads)"})
    calibration_examples: int = field(default=512, metadata={"help": "training rows used to score importance"})
    recovery: Literal["distill", "finetune", "none"] = field(default="distill", metadata={
        "help": "after pruning: distil from the unpruned model, fine-tune on labels, or nothing"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4, epochs=3.0))
    loss: DistillLossConfig = field(default_factory=lambda: DistillLossConfig(hidden_weight=1.0))

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        for name in ("heads", "ffn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is the share to remove and must be in [0, 1), got {getattr(self, name)}")
        _at_least(self, 1, "layers", "hidden", "calibration_examples")
        if not (self.heads or self.ffn or self.layers or self.hidden):
            raise ValueError("nothing to prune: give --heads, --ffn, --layers or --hidden")


@dataclass
class PruneLMConfig(RunOptions, TeacherOptions):
    """`lmcompress prune-lm`: Minitron-style width and depth pruning of a causal LM, recovered by distillation."""

    model: str = field(default="", metadata={
        "help": "causal LM to prune (Llama, SmolLM2, Qwen2/3, Mistral, GPT-2): zoo name (smollm2-135m), HF dir, "
                "pretrain or distill-lm run, or .gguf file"})
    heads: float = field(default=0.0, metadata={
        "help": "share of query heads to remove in every layer (0-<1); under grouped-query attention, inside each "
                "KV group"})
    kv_heads: float = field(default=0.0, metadata={
        "help": "share of KV heads (with their query heads) to remove in every layer (grouped-query attention)"})
    ffn: float = field(default=0.0, metadata={"help": "share of FFN neurons to remove in every layer (0-<1)"})
    layers: int | None = field(default=None, metadata={
        "help": "keep only the N most important layers (importance: 1 - cosine of the layer's input and output)"})
    hidden: int | None = field(default=None, metadata={"help": "embedding channels (hidden width) to keep"})
    calibration_examples: int = field(default=256, metadata={"help": "training blocks used to score importance"})
    recovery: Literal["distill", "none"] = field(default="distill", metadata={
        "help": "after pruning: distil from the unpruned model (distill-lm, top-k cache), or nothing"})
    top_k: int = field(default=64, metadata={
        "help": "recovery: cache the unpruned model's top-k logits per token (0: exact KD, teacher run live)"})
    baseline: bool = field(default=False, metadata={
        "help": "also train the pruned shape from random init on the same blocks and steps (OUT-baseline), and "
                "record its scores under metrics.json \"baseline\""})
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-4, epochs=1.0, warmup_ratio=0.06))
    loss: DistillLossConfig = field(default_factory=lambda: DistillLossConfig(temperature=1.0, alpha=0.0))

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        if not self.data.data:
            raise ValueError("data is required (--data)")
        for name in ("heads", "kv_heads", "ffn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is the share to remove and must be in [0, 1), got {getattr(self, name)}")
        _at_least(self, 1, "layers", "hidden", "calibration_examples")
        _at_least(self, 0, "top_k")
        if not (self.heads or self.kv_heads or self.ffn or self.layers or self.hidden):
            raise ValueError("nothing to prune: give --heads, --kv-heads, --ffn, --layers or --hidden")


@dataclass
class QuantizeConfig(OutputOptions):
    """`lmcompress quantize`: int8 in ONNX Runtime (dynamic or static) or OpenVINO (NNCF), measured."""

    model: str = field(default="", metadata={"help": "fine-tuned run (PyTorch checkpoint) to quantize"})
    method: Literal["static-int8", "onnx-int8", "openvino-int8"] = field(default="onnx-int8", metadata={
        "help": "onnx-int8: ONNX Runtime dynamic; static-int8: ONNX Runtime with activation ranges calibrated on "
                "training rows; openvino-int8: OpenVINO IR quantized by NNCF, calibrated on training rows"})
    calibration_examples: int = field(default=256, metadata={
        "help": "training rows for static-int8 and openvino-int8 calibration"})
    tolerance: float | None = field(default=None, metadata={
        "help": "max |logit difference| allowed between the fp32 ONNX export and PyTorch (default 1e-3)"})
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        _at_least(self, 1, "calibration_examples")
        _positive(self, "tolerance")


@dataclass
class ExportConfig(OutputOptions):
    """`lmcompress export`: a validated ONNX graph (fp32 or fp16) or OpenVINO IR (fp32; bf16 inference hint) beside
    the tokenizer and config, or a GGUF file of a Llama-family causal LM."""

    model: str = field(default="", metadata={
        "help": "fine-tuned run (PyTorch checkpoint) to export; a causal-LM run for gguf"})
    format: Literal["onnx", "openvino", "gguf"] = field(default="onnx", metadata={
        "help": "onnx: model.onnx for ONNX Runtime; openvino: model.xml + model.bin for OpenVINO; gguf: model.gguf "
                "for llama.cpp (Llama-family causal LMs)"})
    precision: Literal["fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_m"] = field(default="fp32", metadata={
        "help": "fp32; fp16 (onnx: weights and activations; gguf: matrices); bf16 (openvino: the inference precision "
                "it is compiled with, on CPUs with AMX or AVX512-BF16); q8_0, q4_0 (gguf: llama.cpp's 8- and 4-bit "
                "block quantisation of the matrices); q4_m (gguf: q4_0 with the attention value and FFN down "
                "projections in q8_0 and the output in Q5_1, as llama.cpp's Q4_K_M mixes bits)"})
    tolerance: float | None = field(default=None, metadata={
        "help": "max |logit difference| vs PyTorch (default 1e-3 for fp32, 5e-2 for fp16; gguf fp16: 0.5); gguf "
                "q8_0/q4_0/q4_m: max relative perplexity increase on the validation blocks (default 0.05 / 0.5 / 0.5)"})
    rounding: Literal["auto", "plain", "importance", "gptq"] = field(default="auto", metadata={
        "help": "gguf q4_0/q4_m: how Q4_0 blocks are rounded: plain (llama-quantize without --imatrix), importance "
                "(llama.cpp's importance-matrix search), gptq (each column's error spread over the columns not yet "
                "rounded, GPTQ); auto: the precision's default (docs/stages.md)"})
    calibration_blocks: int | None = field(default=None, metadata={
        "help": "gguf --rounding importance/gptq: training blocks of the run whose activations weight the rounding "
                "(default 64); 0: plain rounding"})
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _required(self, "model", "out")
        _positive(self, "tolerance")
        _at_least(self, 0, "calibration_blocks")
        if self.rounding != "auto" and (self.format != "gguf" or self.precision not in ("q4_0", "q4_m")):
            raise ValueError(f"--rounding {self.rounding} applies to --format gguf --precision q4_0 or q4_m")
        allowed = {"onnx": ("fp32", "fp16"), "openvino": ("fp32", "bf16"),
                   "gguf": ("fp32", "fp16", "q8_0", "q4_0", "q4_m")}[self.format]
        if self.precision not in allowed:
            raise ValueError(f"--precision {self.precision} does not apply to --format {self.format} "
                              f"(use {' or '.join(allowed)})")


BUDGET_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass
class PredictConfig:
    """`lmcompress predict`: a run's answers for every row of a file, written as JSONL or CSV."""

    model: str = field(default="", metadata={"help": "run directory (any format lmcompress writes)"})
    data: str = field(default="", metadata={
        "help": "texts to predict: a CSV, TSV, JSONL, Parquet or text file (one text per line), a folder of .txt "
                "files (one text each), or - for standard input (one text per line)"})
    out: str = field(default="", metadata={"help": "output file: .jsonl or .csv (the suffix decides)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})
    text_column: str | None = field(default=None, metadata={"help": "column with the text (detected if omitted)"})
    text_pair_column: str | None = field(default=None, metadata={
        "help": "column with the second text, for models trained on pairs (detected if omitted)"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the input: a codec or auto"})
    batch_size: int = field(default=32, metadata={"help": "texts per model call (sorted by length first)"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads of the runtime (default: all cores)"})

    def __post_init__(self) -> None:
        _required(self, "model", "data", "out")
        _at_least(self, 1, "batch_size", "threads")
        if Path(self.out).suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"out must end in .jsonl or .csv, got {self.out}")


@dataclass
class ServeConfig:
    """`lmcompress serve`: a run behind an HTTP API (uvicorn) with dynamic batching."""

    model: str = field(default="", metadata={"help": "run directory (any format lmcompress writes)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind (0.0.0.0 exposes the server to the network: only behind your own proxy)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    max_batch: int = field(default=32, metadata={"help": "most texts run together in one model call"})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "how long the first waiting request waits for others to fill its batch"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads of the runtime (default: all cores)"})
    max_texts: int = field(default=256, metadata={"help": "texts per request (more: 422)"})
    max_chars: int = field(default=20_000, metadata={"help": "characters per text (more: 422)"})
    max_body_bytes: int = field(default=4_000_000, metadata={"help": "bytes per request body (more: 413)"})
    graceful_timeout_s: float = field(default=30.0, metadata={
        "help": "on SIGTERM or Ctrl-C, how long requests in flight may take to finish"})
    access_log: bool = field(default=False, metadata={"help": "log every request"})

    def __post_init__(self) -> None:
        _required(self, "model")
        _at_least(self, 0, "port")
        _at_least(self, 1, "max_batch", "threads", "max_texts", "max_chars", "max_body_bytes")
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port}")
        if self.max_wait_ms < 0 or self.graceful_timeout_s < 0:
            raise ValueError("max_wait_ms and graceful_timeout_s must be >= 0")


def parse_duration(text: str) -> float:
    """'45m', '1h30m', '90s' or a bare number of minutes -> seconds (ValueError naming the format)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"time_budget {text!r}: use minutes (45), or units such as 45m, 1h30m, 600s")
    return sum(float(n) * BUDGET_UNITS[u] for n, u in parts)


@dataclass
class AutoConfig(OutputOptions):
    """`lmcompress auto`: the user states the target; the search measures shapes here, trains the promising ones and
    hands back the smallest model that meets it."""

    teacher: str = field(default="", metadata={"help": "fine-tuned teacher run (classification or regression)"})
    min_retention: float = field(default=0.97, metadata={
        "help": "share of the teacher's validation score the model must keep (0-1]; the test rows only report"})
    min_speedup: float | None = field(default=None, metadata={
        "help": "times faster than the teacher (PyTorch fp32) at --batch-size; or give --max-latency-ms"})
    max_latency_ms: float | None = field(default=None, metadata={"help": "latency ceiling at --batch-size, in ms"})
    batch_size: int = field(default=32, metadata={"help": "batch the target is measured at: 1 or 32 (the report's "
                                                          "two batch sizes)"})
    seq_len: int | None = field(default=None, metadata={
        "help": "tokens per text for training, scoring and timing (default: the teacher's max length)"})
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = field(default="auto", metadata={
        "help": "runtime the model will be served on: onnxruntime (fp32 PyTorch or ORT int8), openvino (fp32 PyTorch "
                "or OpenVINO int8), torch (fp32 or dynamic int8); auto = the int8 of every runtime installed is timed "
                "and the fastest kept"})
    time_budget: str = field(default="45m", metadata={
        "help": "wall time for the whole search (45m, 1h30m, 600s); runs already complete cost nothing"})
    augment: str | None = field(default=None, metadata={
        "help": "in-domain unlabelled text the teacher labels for the students (a file, folder, table or zoo corpus, "
                "as `distill --augment`): as many of its texts as the time budget allows, by the screens' measured "
                "pace (decided once, in OUT/augmentation.json); the report says how many rows each student saw"})
    augment_spans: int = field(default=4, metadata={
        "help": "without --augment, on single-text classification: up to this many word spans of every labelled text "
                "(as `distill --augment-spans`) are labelled by the teacher, as many as the time budget allows; 0: "
                "the labelled rows only"})
    donors: str = field(default="auto", metadata={
        "help": "pre-trained encoders a student may start from, beside the teacher's cuts: auto (every zoo encoder "
                "installed that is smaller than the teacher), none, or NAME,... (zoo names, folders, Hub ids); each "
                "donor's biggest fast-enough shape (whole or cut) is screened and trained like a cut"})
    shortlist: int = field(default=4, metadata={"help": "shapes cut from the teacher screened by a short distillation "
                                                        "(one per depth); each donor adds one"})
    screen_rows: int = field(default=2000, metadata={"help": "training rows of a screening distillation"})
    epochs: float = field(default=4.0, metadata={"help": "distillation epochs of a candidate trained in full"})
    learning_rate: float = field(default=1e-4, metadata={"help": "distillation learning rate"})
    threads: int | None = field(default=None, metadata={"help": "threads for every timing (default: all cores)"})
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _required(self, "teacher", "out")
        if (self.min_speedup is None) == (self.max_latency_ms is None):
            raise ValueError("give exactly one speed target: --min-speedup or --max-latency-ms")
        if not 0 < self.min_retention <= 1:
            raise ValueError(f"min_retention is a share in (0, 1], got {self.min_retention}")
        if self.batch_size not in (1, 32):
            raise ValueError(f"batch_size must be 1 or 32 (the batches the report times), got {self.batch_size}")
        _positive(self, "min_speedup", "max_latency_ms", "epochs", "learning_rate")
        _at_least(self, 1, "seq_len", "shortlist", "screen_rows", "threads")
        _at_least(self, 0, "augment_spans")
        if parse_duration(self.time_budget) <= 0:
            raise ValueError(f"time_budget must be more than 0, got {self.time_budget}")

    @property
    def budget_s(self) -> float:
        return parse_duration(self.time_budget)

# --------------------------------------------------------------------------------------------------------------
# dict / YAML -> dataclass with type checks and unknown-key rejection
# --------------------------------------------------------------------------------------------------------------


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# ------------------------------------------------------------------------------------------------ removed options

# Option values that were removed. The CLI, YAML recipes and the Python API still recognise them and refuse them with
# why and what to use instead; --help and the configs' Literal types no longer offer them.
REMOVED: dict[tuple[str, str, Any], str] = {  # (config class, field, value) -> the refusal
    ("QuantizeConfig", "method", "dynamic-int8"):
        "--method dynamic-int8 was removed: torch.ao's quantize_dynamic is deprecated and its successor, torchao int8, "
        "ran 0.04-0.93x as fast as fp32 on CPU (benchmarks/results/torchao_int8.md); use --method onnx-int8 or "
        "openvino-int8 (faster, and a file you deploy as it is)",
}


def removed_values(cls: type, name: str) -> tuple[Any, ...]:
    return tuple(value for (owner, field_name, value) in REMOVED if (owner, field_name) == (cls.__name__, name))


def _refuse_removed(cls: type, name: str, value: Any, where: str) -> None:
    refusal = REMOVED.get((cls.__name__, name, value)) if isinstance(value, str) else None
    if refusal:
        raise LmcError(f"{where}: {refusal}")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to `tp` where that is lossless (int -> float), else raise LmcError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except LmcError as exc:
                errors.append(str(exc))
        raise LmcError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise LmcError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise LmcError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LmcError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LmcError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise LmcError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise LmcError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, raw: dict[str, Any] | None, where: str = "config") -> Any:
    """Build dataclass `cls` from a plain dict, recursing into nested dataclasses."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise LmcError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields_by_name)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise LmcError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise LmcError(f"{where}.{name}: expected a mapping of {tp.__name__} keys")
            # start from this field's own defaults (distill's train section differs from finetune's)
            defaults = fields_by_name[name].default_factory
            base = dataclasses.asdict(defaults()) if defaults is not dataclasses.MISSING else {}
            kwargs[name] = from_dict(tp, {**base, **value}, f"{where}.{name}")
        else:
            _refuse_removed(cls, name, value, where)
            kwargs[name] = _check_value(value, tp, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise LmcError(f"{where}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LmcError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmcError(f"config file {path} is not valid YAML: {first}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise LmcError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
    return loaded


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` (CLI flags) over `base` (YAML)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# CLI flags generated from the dataclasses, so YAML and flags can never drift apart
# --------------------------------------------------------------------------------------------------------------

_FLAG_TYPES = {int: int, float: float, str: str}


def _flag_type(tp: Any) -> tuple[Any, tuple | None]:
    """(argparse type, choices) for a field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(inner[0])
    if origin is Literal:
        return str, typing.get_args(tp)
    return _FLAG_TYPES.get(tp, str), None


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add `--field-name` for every field of `cls` (nested dataclasses are flattened, keyed `section.field`)."""
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})  # the stage's own options first, then the shared ones it inherits
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        tp = hints[f.name]
        if f.name in skip:
            continue
        if _is_dataclass_type(tp):
            add_flags(parser, tp, prefix=f"{prefix}{f.name}.", skip=skip)
            continue
        flag = "--" + f.name.replace("_", "-")
        dest = prefix + f.name
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if tp is bool or tp == (bool | None):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            arg_type, choices = _flag_type(tp)
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else f.name.upper()
            if choices:  # a removed value parses, so that from_dict refuses it with the reason; --help omits it
                choices = choices + removed_values(cls, f.name)
            parser.add_argument(flag, dest=dest, type=arg_type, choices=choices, default=None, help=help_text,
                                metavar=metavar)


def flags_to_dict(namespace: argparse.Namespace) -> dict[str, Any]:
    """Flags the user actually gave, nested by `section.field` dest names."""
    nested: dict[str, Any] = {}
    for dest, value in vars(namespace).items():
        if value is None or dest in ("command", "config", "debug", "func", "json", "quiet", "trust_remote_code"):
            continue
        parts = dest.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def build_config(cls: type, yaml_path: str | None, flags: dict[str, Any], where: str) -> Any:
    """YAML (optional) overlaid with CLI flags, checked into `cls`."""
    base = load_yaml(yaml_path) if yaml_path else {}
    return from_dict(cls, merge(base, flags), where=where if not yaml_path else str(yaml_path))


def flat_to_nested(cls: type, flat: dict[str, Any]) -> dict[str, Any]:
    """`max_length=64` -> `{"data": {"max_length": 64}}`: the Python API takes the CLI's flat names."""
    hints = typing.get_type_hints(cls)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(cls) if _is_dataclass_type(hints[f.name])}
    owner = {f.name: section for section, tp in sections.items() for f in dataclasses.fields(tp)}
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key in sections and isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
        elif key in sections:  # `data="rotten-tomatoes"` is the data section's own `data` field
            nested.setdefault(key, {})[key] = value
        elif key in owner and key not in {f.name for f in dataclasses.fields(cls)}:
            nested.setdefault(owner[key], {})[key] = value
        else:
            nested[key] = value
    return nested
