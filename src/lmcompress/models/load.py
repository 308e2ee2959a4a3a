"""Resolve a model spec (zoo name | local HF dir | preset) to a tokenizer and a model with the right head.

Every load is local: paths are passed straight to `from_pretrained`, which never contacts a hub for an existing
directory, and `trust_remote_code` stays off unless the user passes --trust-remote-code (`allow_remote_code`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining,
                          AutoTokenizer, PreTrainedTokenizerBase)

from .. import catalog
from ..errors import LmcError
from .families import ENCODER_FAMILIES, check_objective, family_name
from . import presets
from .heads import head_class, saved_head
from .hub import is_hub_id, resolve_hub_id
from .onnx_bert import zoo_model_dir
from .trust import remote_code_allowed

log = logging.getLogger("lmcompress")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

DEFAULT_PRESET_TOKENIZER = "minilm-l6"
@dataclass
class ModelSource:
    """Where a model comes from: a directory with weights, or a preset to initialise at random."""

    spec: str
    path: Path | None  # HF directory, None for presets
    preset: presets.Preset | None
    tokenizer_path: Path | None  # None only for a preset whose vocabulary is trained (pretrain --train-tokenizer)
    hub: dict[str, str] | None = None  # named by Hub id: the id, the revision asked for and the commit resolved


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "trust_remote_code" in text and not remote_code_allowed():
        return "it ships its own Python model code; re-run with --trust-remote-code only if you trust its source"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _resolve_dir(spec: str, role: str) -> Path:
    if catalog.is_zoo_name(spec):
        entry = catalog.get(spec)
        if entry.kind != "model":
            raise LmcError(f"'{spec}' is a dataset, not a model; pass it as --data")
        if entry.name == "smollm2-135m":
            raise LmcError("'smollm2-135m' is a causal-LM teacher for `lmcompress distill-lm`; it has no task head "
                           "to fine-tune")
        return zoo_model_dir(entry)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LmcError(f"{role} {spec} is a folder without config.json, not a Hugging Face checkpoint")
        return path
    if path.exists():
        raise LmcError(f"{role} {spec} is a file; expected a model folder, zoo name or preset")
    raise LmcError(
        f"unknown {role} '{spec}': not a zoo model ({', '.join(n for n, e in catalog.ENTRIES.items() if e.kind == 'model')}), "
        "an existing folder, a Hub id (org/name[@revision]) or a preset like bert-4l-312h"
    )


def resolve(spec: str, tokenizer: str | None = None, role: str = "model", new_vocab: bool = False) -> ModelSource:
    """`new_vocab`: the caller trains a vocabulary, so a preset needs no tokenizer."""
    preset = presets.parse_preset(spec)
    if preset is not None and not Path(spec).exists():
        if new_vocab and tokenizer is None:
            return ModelSource(spec, None, preset, None)
        tok_spec = tokenizer or DEFAULT_PRESET_TOKENIZER
        try:
            tok_path = _resolve_dir(tok_spec, "tokenizer") if catalog.is_zoo_name(tok_spec) else Path(tok_spec)
        except LmcError as exc:
            raise LmcError(f"preset {spec} needs a tokenizer: {exc} (or pass --tokenizer DIR)") from None
        if not tok_path.is_dir():
            raise LmcError(f"tokenizer {tok_spec} is not a folder")
        return ModelSource(spec, None, preset, tok_path)
    hub = None
    if is_hub_id(spec):
        path, hub = resolve_hub_id(spec, role)
    else:
        path = _resolve_dir(spec, role)
    tok_path = Path(tokenizer) if tokenizer else path
    return ModelSource(spec, path, None, tok_path, hub)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:  # corrupt or missing tokenizer files raise many types
        raise LmcError(f"cannot load a tokenizer from {path}: {first_line(exc)}") from None
    if len(tok) <= len(set(tok.all_special_tokens)):
        raise LmcError(f"tokenizer in {path} has only its {len(tok)} special tokens; its vocabulary is missing")
    if tok.pad_token is None:
        # GPT-2 style tokenizers have no pad token; padding reuses end-of-text (masked out anyway).
        if tok.eos_token is None:
            raise LmcError(f"tokenizer in {path} has neither a pad nor an end-of-sequence token")
        tok.pad_token = tok.eos_token
    return tok


def load_for_sequence_classification(source: ModelSource, tokenizer: PreTrainedTokenizerBase, num_labels: int,
                                     labels: list[str] | None, regression: bool, seed: int,
                                     head: str | None = None) -> transformers.PreTrainedModel:
    """A model with a fresh (or reused, when the labels match) task head: per sequence, or per token / span start
    and end for head "token-classification" / "question-answering"."""
    auto = head_class(head)
    head_cfg = dict(num_labels=num_labels, problem_type="regression" if regression else "single_label_classification")
    if head == "token-classification":
        head_cfg.pop("problem_type")
    elif head == "question-answering":
        head_cfg = dict(num_labels=2)  # start and end logits
    if labels is not None:
        head_cfg["id2label"] = {i: name for i, name in enumerate(labels)}
        head_cfg["label2id"] = {name: i for i, name in enumerate(labels)}
    transformers.set_seed(seed)
    if source.preset is not None:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        config = presets.build_config(source.preset, len(tokenizer), tokenizer.pad_token_id, bos, eos)
        for key, value in head_cfg.items():
            setattr(config, key, value)
        model = auto.from_config(config)
        log.info("initialised %s (%s) at random", source.spec, source.preset.name)
    else:
        try:
            config = AutoConfig.from_pretrained(str(source.path), local_files_only=True,
                                                trust_remote_code=remote_code_allowed(), **head_cfg)
            if config.pad_token_id is None:
                config.pad_token_id = tokenizer.pad_token_id
            model = auto.from_pretrained(
                str(source.path), config=config, local_files_only=True, ignore_mismatched_sizes=True,
                trust_remote_code=remote_code_allowed())
        except LmcError:
            raise
        except Exception as exc:
            raise LmcError(f"cannot load model from {source.path}: {first_line(exc)}") from None
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise LmcError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {embeddings} rows; "
            "the tokenizer does not belong to this model"
        )
    return model


def check_head(folder: Path, labels: list[str] | None, regression: bool,
                task: str | None = None) -> transformers.PretrainedConfig:
    """The saved head must match the data: same task kind and the same labels in the same order -> its config."""
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot read {folder}/config.json: {first_line(exc)}") from None
    head = saved_head(config)
    if task is not None and (head == "question-answering") != (task == "question-answering"):
        raise LmcError(f"{folder} holds a {head or 'sequence-classification'} model but the data is a {task} task")
    if head == "question-answering":
        return config
    saved_regression = config.problem_type == "regression" or (config.num_labels == 1 and not config.problem_type
                                                                and head is None)
    if regression != saved_regression:
        kind = "regression" if saved_regression else "classification"
        raise LmcError(f"{folder} holds a {kind} model but the data is a "
                       f"{'regression' if regression else 'classification'} task")
    if labels is not None:
        trained = [str(config.id2label[i]) for i in range(config.num_labels)]
        if trained != labels:
            raise LmcError(f"{folder} was trained for labels {trained[:10]} but the data has {labels[:10]}; "
                           "evaluate it on the data it was trained for")
    return config


def load_trained_classifier(folder: Path, labels: list[str] | None, regression: bool,
                            task: str | None = None) -> transformers.PreTrainedModel:
    """A fine-tuned checkpoint exactly as saved; its head must match the data's task and labels."""
    config = check_head(folder, labels, regression, task)
    try:
        return head_class(saved_head(config)).from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot load model from {folder}: {first_line(exc)}") from None


def load_causal_lm(folder: Path) -> transformers.PreTrainedModel:
    """A causal-LM checkpoint exactly as saved, in eval mode (for generation)."""
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                    trust_remote_code=remote_code_allowed()).eval()
    except Exception as exc:
        raise LmcError(f"cannot load a causal LM from {folder}: {first_line(exc)}") from None


def load_encoder(folder: Path) -> transformers.PreTrainedModel:
    """An encoder checkpoint without a task head (its last hidden states)."""
    try:
        return AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot load an encoder from {folder}: {first_line(exc)}") from None


def model_family(source: ModelSource) -> str:
    """The model's family (models/families.py: bert, roberta for XLM-R too, gpt2, llama ...) or, without an adapter,
    its transformers model_type; read without loading weights."""
    if source.preset is not None:
        return source.preset.family
    try:
        config = AutoConfig.from_pretrained(str(source.path), local_files_only=True,
                                            trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot read {source.path}/config.json: {first_line(exc)}") from None
    return family_name(config.model_type)


def load_for_pretraining(source: ModelSource, tokenizer: PreTrainedTokenizerBase, objective: str,
                         seed: int) -> transformers.PreTrainedModel:
    """The family's pre-training model: *ForPreTraining for MLM + NSP/SOP (BERT, ALBERT), *ForMaskedLM for MLM,
    *ForCausalLM for CLM. Heads missing from a checkpoint (an encoder like minilm-l6) start fresh, with the MLM
    decoder tied to the word embeddings."""
    auto = {"clm": AutoModelForCausalLM, "mlm": AutoModelForMaskedLM}.get(objective, AutoModelForPreTraining)
    transformers.set_seed(seed)
    try:
        if source.preset is not None:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
            eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
            config = presets.build_config(source.preset, len(tokenizer), tokenizer.pad_token_id, bos, eos)
            model = auto.from_config(config)
            log.info("initialised %s (%s) at random", source.spec, source.preset.name)
        else:
            model = auto.from_pretrained(str(source.path), local_files_only=True,
                                         trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot build a {objective} model from {source.spec}: {first_line(exc)}") from None
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise LmcError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {embeddings} rows; "
                       "the tokenizer does not belong to this model")
    return model


@contextlib.contextmanager
def _no_tqdm():
    """transformers' GGUF reader draws a tqdm bar it offers no switch for; swap it for a plain pass-through."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils  # needs the optional gguf package

    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@dataclass
class LMTeacher:
    model: transformers.PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path  # folder or single file (.gguf): what the teacher cache fingerprints
    family: str
    objective: str  # "clm" | "mlm": the one asked for, or the family's when it was "auto"
    untrained: list[str]  # head parameters the checkpoint lacks (started at random)


def _lm_source(spec: str) -> tuple[Path, Path, dict[str, str], transformers.PretrainedConfig]:
    """Where a language-model teacher lives and its config, read without loading weights: (path, folder,
    from_pretrained extras, config)."""
    if catalog.is_zoo_name(spec):
        entry = catalog.get(spec)
        if entry.kind != "model":
            raise LmcError(f"'{spec}' is a dataset, not a model; pass it as --data")
        path = entry.require()
    elif is_hub_id(spec):
        path, _ = resolve_hub_id(spec, "--teacher")
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise LmcError(f"--teacher {spec}: no such zoo model, folder, .gguf file or Hub id (org/name[@revision])")
    gguf = path.suffix == ".gguf"
    if gguf:
        folder, extra = path.parent, {"gguf_file": path.name}
        if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it
            raise LmcError("reading a .gguf teacher needs the gguf package: pip install gguf")
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **extra)
        except Exception as exc:
            raise LmcError(f"cannot read the GGUF teacher {path}: {first_line(exc)}") from None
    elif path.is_dir() and (path / "config.json").is_file():
        folder, extra = path, {}
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                trust_remote_code=remote_code_allowed())
        except Exception as exc:  # an unknown model_type, a broken config.json
            raise LmcError(f"cannot read the model config in {folder}: {first_line(exc)}") from None
    else:
        raise LmcError(f"--teacher {spec} is neither a Hugging Face model folder nor a .gguf file")
    return path, folder, extra, config


def lm_family(spec: str) -> str:
    """The family of a language-model teacher, from its config alone (to refuse before loading weights)."""
    return family_name(_lm_source(spec)[3].model_type)


def load_lm_teacher(spec: str, objective: str) -> LMTeacher:
    """A teacher with its language-model head, in eval mode: a zoo model (smollm2-135m is a GGUF file), an HF dir,
    a pretrain run or a .gguf file. `objective` auto picks clm for causal models and mlm for encoders."""
    path, folder, extra, config = _lm_source(spec)
    gguf = "gguf_file" in extra
    family = family_name(config.model_type)
    if objective == "auto":
        objective = "mlm" if family in ENCODER_FAMILIES else "clm"
    check_objective(family, objective)  # before loading weights
    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    log.info("loading teacher %s (%s, %s)", spec, family, objective)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **extra) if gguf \
            else load_tokenizer(folder)
        with _no_tqdm():  # GGUF dequantisation draws its own progress bars
            model, info = auto.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                               trust_remote_code=remote_code_allowed(), **extra)
    except LmcError:
        raise
    except Exception as exc:
        raise LmcError(f"cannot load a {objective} teacher from {spec}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gguf:  # a GGUF-loaded config carries quantization settings that save_pretrained and some kernels refuse
        model.config.__dict__.pop("quantization_config", None)
    untrained = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    return LMTeacher(model.eval(), tokenizer, path, family, objective, untrained)
