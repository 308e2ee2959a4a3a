"""`lmcompress.load(RUN)`: one predictor for every run lmcompress writes (a PyTorch checkpoint, an ONNX fp32/int8
graph, an OpenVINO IR, a model2vec static table, a GGUF file), answering as transformers' pipeline of its task does:

    predictor = lmcompress.load("runs/demo/auto/best")
    predictor(["a gripping film", "dull"])   # [{"label": "fresh", "score": 0.97}, {"label": "rotten", ...}]

Texts are tokenised once, sorted by length and run in batches padded to their own longest row (little padding
wasted on short texts), then put back in the caller's order. The runtime comes from the run itself
(backends.load_run_model: the same object `evaluate` scores), so a predictor's labels are evaluate's argmax.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from transformers import AutoConfig

from ..backends import llama_cpp, load_run_model
from ..backends.gguf_file import GGUF_FILE, load_gguf
from ..backends.onnx import MODEL_FILE
from ..backends.serving import arithmetic, run_backend
from ..data import qa
from ..errors import LmcError
from ..machine import processor
from ..measure import count_params
from ..models import static
from ..models.heads import saved_head
from ..models.load import first_line, load_causal_lm, load_encoder, load_tokenizer
from ..models.trust import remote_code_allowed
from ..models.outputs import forward, mean_pool
from ..runs.manifest import EMBEDDING_TASK, MANIFEST, Manifest, read_manifest

log = logging.getLogger("lmcompress")
DEFAULT_BATCH = 32


@dataclass(frozen=True)
class ModelCard:
    """What a predictor serves: `GET /metadata` and `predict`'s summary."""

    run: str
    task: str  # text-classification | regression | token-classification | question-answering | sentence-embedding
    # | text-generation
    runtime: str  # torch | onnxruntime | openvino | static | gguf
    precision: str  # fp32 | bf16 | int8 | the GGUF file's type
    labels: list[str]
    max_length: int
    params: int
    has_pair: bool = False
    processor: dict[str, Any] = field(default_factory=processor)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recorded_max_length(manifest: Manifest, tokenizer) -> int:
    """The max length the run was trained with (lmcompress.json), else the tokenizer's own limit (at most 512)."""
    data = manifest.data_options
    if data.get("max_length"):
        return int(data["max_length"])
    limit = getattr(tokenizer, "model_max_length", None) or 512
    return int(min(limit, 512))


def _batches(encoded: list[dict[str, list[int]]], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (longest first: a first batch that fits fits them all)."""
    order = np.argsort([-len(row["input_ids"]) for row in encoded], kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _softmax(values: np.ndarray) -> np.ndarray:
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def _checked(batch_size: int) -> int:
    if batch_size < 1:
        raise LmcError(f"batch size must be >= 1, got {batch_size}")
    return batch_size


class Predictor:
    """Texts in, one answer per text out (the answer's shape is the task's: see each subclass)."""

    card: ModelCard

    def __init__(self, model: torch.nn.Module, tokenizer, card: ModelCard, batch_size: int = DEFAULT_BATCH):
        self.model, self.tokenizer, self.card, self.batch_size = model.eval(), tokenizer, card, _checked(batch_size)

    def __call__(self, texts: str | Sequence[str], pairs: Sequence[str] | None = None) -> Any:
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
        self._check(texts, pairs)
        answers = self.predict(texts, pairs) if texts else []
        return answers[0] if single else answers

    def _check(self, texts: list[str], pairs: list[str] | None) -> None:
        if any(not isinstance(t, str) for t in texts):
            raise LmcError("every text must be a string")
        if pairs is not None and (len(pairs) != len(texts) or any(not isinstance(p, str) for p in pairs)):
            raise LmcError(f"text pairs must be {len(texts)} strings, one per text")
        if pairs is not None and not self.card.has_pair:
            raise LmcError(f"{self.card.run} was trained on single texts; it takes no text pairs")
        if pairs is None and self.card.has_pair:
            raise LmcError(f"{self.card.run} was trained on text pairs; give a second text for each")

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[Any]:
        raise NotImplementedError

    def encode(self, texts: list[str], pairs: list[str] | None, **options: Any) -> list[dict[str, list[int]]]:
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.card.max_length, **options)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]

    @torch.inference_mode()
    def outputs(self, encoded: list[dict[str, list[int]]], run: Callable[[dict[str, torch.Tensor]], torch.Tensor]
                ) -> list[np.ndarray]:
        """`run` over length-sorted, padded batches -> one array per row, unpadded where it is per token."""
        results: list[np.ndarray | None] = [None] * len(encoded)
        for rows in _batches(encoded, self.batch_size):
            batch = self.tokenizer.pad([encoded[i] for i in rows], padding=True, pad_to_multiple_of=8,
                                       return_tensors="pt")
            values = run(dict(batch)).float().cpu().numpy()
            for i, value in zip(rows, values):
                results[i] = value
        return results  # type: ignore[return-value]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return forward(self.model, batch).logits


class TextClassifier(Predictor):
    """Sequence classification: [{"label": name, "score": probability}] per text, the best label (transformers'
    text-classification pipeline). Regression: {"label": the head's name, "score": the predicted value}."""

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        logits = self.outputs(self.encode(texts, pairs), self.logits)
        if self.card.task == "regression":
            return [{"label": self.card.labels[0], "score": float(row[0])} for row in logits]
        answers = []
        for row in logits:
            best = int(row.argmax())
            answers.append({"label": self.card.labels[best], "score": float(_softmax(row)[best])})
        return answers


def _tag_parts(tag: str) -> tuple[str, str]:
    """("B" | "I" | "E" | "S" | "O", entity type) of a BIO / BIOES tag (L and U as E and S); a tag without a prefix
    (PER) is inside an entity of its own name, as the pipeline reads it."""
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if not dash or len(prefix) != 1:
        return "I", tag
    return {"L": "E", "U": "S"}.get(prefix, prefix), kind


def group_entities(text: str, words: list[tuple[str, float, int, int]]) -> list[dict[str, Any]]:
    """(tag, probability, char start, char end) per word -> entities {"entity_group", "score" (mean over its words),
    "word", "start", "end"}. B and S start an entity, I and E continue one of the same type (else start one), E and
    S end it, O ends any."""
    entities: list[dict[str, Any]] = []
    scores: list[float] = []
    open_ = False
    for tag, score, start, end in words:
        prefix, kind = _tag_parts(tag)
        if prefix == "O":
            open_ = False
            continue
        if not (open_ and prefix in ("I", "E") and entities[-1]["entity_group"] == kind):
            entities.append({"entity_group": kind, "start": start})
            scores = []
        entities[-1]["end"] = end
        scores.append(score)
        entities[-1]["score"] = float(np.mean(scores))
        open_ = prefix in ("B", "I")
    return [{"entity_group": e["entity_group"], "score": e["score"], "word": text[e["start"]:e["end"]],
             "start": e["start"], "end": e["end"]} for e in entities]


class TokenClassifier(Predictor):
    """Named entities: per text, [{"entity_group", "score", "word", "start", "end"}] (the token-classification
    pipeline's aggregation "simple"). A word's tag is its first sub-token's, as the model was trained; words are
    grouped by `group_entities`. Text past max length tokens is not tagged (a warning says how many texts)."""

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[list[dict[str, Any]]]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.card.max_length,
                                 return_offsets_mapping=True)
        rows = [{k: encoded[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
                for i in range(len(texts))]
        cut = sum(len(row["input_ids"]) >= self.card.max_length for row in rows)
        if cut:
            log.warning("%d of %d texts reached %d tokens: words past that are not tagged (split long texts)", cut,
                        len(texts), self.card.max_length)
        logits = self.outputs(rows, self.logits)
        return [group_entities(text, self._words(logits[i], encoded.word_ids(i), encoded["offset_mapping"][i]))
                for i, text in enumerate(texts)]

    def _words(self, logits: np.ndarray, word_ids: list[int | None],
               offsets: list[tuple[int, int]]) -> list[tuple[str, float, int, int]]:
        words: dict[int, list[Any]] = {}  # word -> [tag, probability, start, end]
        for position, word in enumerate(word_ids):
            if word is None:
                continue
            if word not in words:
                probs = _softmax(logits[position])
                tag = int(probs.argmax())
                words[word] = [self.card.labels[tag], float(probs[tag]), *offsets[position]]
            words[word][3] = offsets[position][1]
        return [tuple(w) for w in words.values()]  # type: ignore[misc]


class QuestionAnswerer(Predictor):
    """Extractive question answering: texts are the questions, pairs their contexts -> per question {"score",
    "start", "end", "answer"} (the question-answering pipeline's fields): the best span over every window of a long
    context, decoded as `evaluate` decodes it; the score is the span's start x end probability in its window."""

    def _check(self, texts: list[str], pairs: list[str] | None) -> None:
        if pairs is None:
            raise LmcError(f"{self.card.run} answers questions: give a context for each question as its pair")
        super()._check(texts, pairs)

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        options, allow_empty = self.qa_settings
        frame = pd.DataFrame({"question": texts, "context": pairs})
        features = qa.tokenize_eval_features(frame, self.tokenizer, self.card.max_length, options.doc_stride)
        rows = [features.dataset[i] for i in range(len(features.dataset))]
        logits = self.outputs(rows, self.logits)  # per window [T_padded, 2]
        spans: dict[int, tuple[float, float, int, int]] = {}  # question -> (score, probability, char start, end)
        empty: dict[int, tuple[float, float]] = {}  # question -> lowest null score over its windows, probability
        for window, question in enumerate(features.example_of):
            length = len(rows[window]["input_ids"])
            start, end = logits[window][:length, 0], logits[window][:length, 1]
            null = float(start[qa.CLS_INDEX] + end[qa.CLS_INDEX])
            if question not in empty or null < empty[question][0]:
                empty[question] = (null, float(_softmax(start)[qa.CLS_INDEX] * _softmax(end)[qa.CLS_INDEX]))
            span = qa.best_token_span(start, end, features.offsets[window], options.n_best,
                                      options.max_answer_length)
            if span is not None and (question not in spans or span[0] > spans[question][0]):
                probability = float(_softmax(start)[span[1]] * _softmax(end)[span[2]])
                offsets = features.offsets[window]
                spans[question] = (span[0], probability, offsets[span[1]][0], offsets[span[2]][1])
        answers = []
        for question, context in enumerate(pairs or []):
            span = spans.get(question)
            if span is None or (allow_empty and empty[question][0] > span[0]):  # as qa.decode_answers decides
                answers.append({"score": empty[question][1] if allow_empty else 0.0, "start": 0, "end": 0,
                                "answer": ""})
            else:
                answers.append({"score": span[1], "start": span[2], "end": span[3], "answer": context[span[2]:span[3]]})
        return answers

    @functools.cached_property
    def qa_settings(self) -> tuple[qa.QAOptions, bool]:
        """How the run windows and decodes (its data config), and whether it may answer nothing (trained on data
        with unanswerable questions)."""
        manifest = read_manifest(Path(self.card.run))
        data = manifest.data_options
        options = qa.QAOptions(doc_stride=data.get("doc_stride") or qa.default_stride(self.card.max_length),
                               max_answer_length=data.get("max_answer_length") or 30)
        return options, bool((manifest.data or {}).get("unanswerable"))


class SentenceEncoder(Predictor):
    """Sentence embeddings: one vector (a list of floats) per text, the mean of the last hidden states over real
    tokens, as `distill-embeddings` trains and scores them (sentence-transformers' mean pooling)."""

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[list[float]]:
        return [row.tolist() for row in self.outputs(self.encode(texts, None), self._pooled)]

    def _pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])


class TextGenerator(Predictor):
    """A causal LM: `generate(prompt, max_new_tokens)` -> {"generated_text": prompt + continuation} (greedy, as the
    text-generation pipeline with do_sample=False); calling it on texts generates for each."""

    def predict(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, str]]:
        return [self.generate(text) for text in texts]

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 32) -> dict[str, str]:
        if max_new_tokens < 1:
            raise LmcError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids = self.tokenizer(prompt, return_tensors="pt")
        length = ids["input_ids"].shape[1]
        if length == 0:
            raise LmcError("the prompt is empty after tokenisation")
        if length + max_new_tokens > self.card.max_length:
            raise LmcError(f"the prompt has {length} tokens; with max_new_tokens {max_new_tokens} that passes the "
                           f"model's {self.card.max_length} positions: shorten the prompt or ask for fewer tokens")
        out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        # decoded whole, then the decoded prompt cut off: decoding the new tokens alone drops a SentencePiece
        # tokenizer's leading space ("was" + "great")
        whole = self.tokenizer.decode(out[0], skip_special_tokens=True)
        prefix = self.tokenizer.decode(ids["input_ids"][0], skip_special_tokens=True)
        return {"generated_text": prompt + whole[len(prefix):]}


class LlamaCppGenerator(TextGenerator):
    """A GGUF run in llama.cpp itself (when llama-cpp-python is installed), as people run GGUF files: the file's
    own vocabulary and quantised kernels, greedy like TextGenerator (backends.llama_cpp.complete)."""

    def __init__(self, model, card: ModelCard, batch_size: int = DEFAULT_BATCH):  # (a llama.cpp model has no .eval())
        self.model, self.tokenizer, self.card, self.batch_size = model, None, card, _checked(batch_size)
        self.stops = llama_cpp.end_tokens(model)

    def generate(self, prompt: str, max_new_tokens: int = 32) -> dict[str, str]:
        return {"generated_text": prompt + llama_cpp.complete(self.model, prompt, max_new_tokens, self.stops)}


def _llama_cpp_predictor(folder: Path, manifest: Manifest, threads: int | None,
                         batch_size: int) -> LlamaCppGenerator:
    model = llama_cpp.open_model(folder / GGUF_FILE, 0, threads or torch.get_num_threads())
    precision = (manifest.export or {}).get("precision", "gguf")
    card = ModelCard(run=str(folder), task="text-generation", runtime="llama.cpp", precision=f"{precision} file",
                     labels=[], max_length=llama_cpp.positions(model), params=llama_cpp.parameters(model))
    return LlamaCppGenerator(model, card, batch_size)


# ------------------------------------------------------------------------------------------------------------ load


def _config(folder: Path):
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot read {folder}/config.json: {first_line(exc)}") from None


def _task_and_labels(folder: Path, manifest: Manifest) -> tuple[str, list[str]]:
    """The task a run serves and its label names, from its manifest and its head."""
    kind = manifest.task_type
    if (folder / GGUF_FILE).is_file() or kind == "clm":
        return "text-generation", []
    if manifest.is_language_model:
        raise LmcError(f"{folder} is a masked-LM run ({kind}): predict and serve take task models, sentence "
                       "encoders and causal LMs; fine-tune or distil it for a task first")
    if manifest.is_embedding_run:
        return EMBEDDING_TASK, []
    if static.is_static_dir(folder):
        head = static.head_config(folder)
        return ("regression" if head.get("problem_type") == "regression" else "text-classification",
                [str(label) for label in head.get("labels") or ["score"]])
    config = _config(folder)
    labels = [str(config.id2label[i]) for i in range(config.num_labels)] if config.id2label else []
    head = saved_head(config)
    if head:
        return head, labels
    architectures = [str(a) for a in config.architectures or []]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "text-generation", []  # a plain causal-LM checkpoint
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return EMBEDDING_TASK, []  # a plain encoder (minilm-l6 itself): sentence embeddings
    regression = config.problem_type == "regression" or (config.num_labels == 1 and not config.problem_type)
    return ("regression" if regression else "text-classification"), labels


def _runtime(folder: Path) -> str:
    if (folder / GGUF_FILE).is_file():
        return "gguf"
    if static.is_static_dir(folder):
        return "static"
    return run_backend(folder).removesuffix("-bf16")


def _precision(folder: Path, manifest: Manifest) -> str:
    """The arithmetic served, as compare labels it (backends.serving.arithmetic: int8, bf16 where an OpenVINO IR runs
    in bf16 here, fp16, fp32); a GGUF file's stored type, which transformers dequantises into fp32 to run it."""
    if (folder / GGUF_FILE).is_file():
        return f"{(manifest.export or {}).get('precision', 'gguf')} file, run in fp32"
    return arithmetic(folder, run_backend(folder))


def _model_and_tokenizer(folder: Path, task: str, threads: int | None) -> tuple[torch.nn.Module, Any]:
    if (folder / GGUF_FILE).is_file():
        return load_gguf(folder / GGUF_FILE)  # both from the one file, read once
    return _model(folder, task, threads), load_tokenizer(folder)


def _max_length(manifest: Manifest, task: str, model: torch.nn.Module, tokenizer) -> int:
    """Tokens per text: what the run was trained with; for generation, every position the model has."""
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if task == "text-generation" and positions:
        return int(positions)
    return _recorded_max_length(manifest, tokenizer)


def _model(folder: Path, task: str, threads: int | None) -> torch.nn.Module:
    if task == "text-generation":
        if (folder / MODEL_FILE).is_file():
            raise LmcError(f"{folder} holds an ONNX causal LM, which has no generate loop here; load the run it was "
                           "exported from (or its GGUF export)")
        return load_causal_lm(folder)
    if task == EMBEDDING_TASK:
        return load_encoder(folder)
    return load_run_model(folder, None, task == "regression", threads,
                          task=task if task in ("token-classification", "question-answering") else None)


PREDICTORS: dict[str, type[Predictor]] = {"text-classification": TextClassifier, "regression": TextClassifier,
                                          "token-classification": TokenClassifier,
                                          "question-answering": QuestionAnswerer,
                                          EMBEDDING_TASK: SentenceEncoder, "text-generation": TextGenerator}


def load(run: str | Path, threads: int | None = None, batch_size: int = DEFAULT_BATCH) -> Predictor:
    """The predictor of a run directory, whatever its format; `threads` caps the runtime's CPU threads (default:
    all cores this process may use)."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        raise LmcError(f"--model {run}: no such run directory")
    if not any((folder / name).is_file() for name in ("config.json", GGUF_FILE, MANIFEST)):
        raise LmcError(f"{folder} is not a run directory or Hugging Face checkpoint (no config.json)")
    if threads is not None:
        if threads < 1:
            raise LmcError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    manifest = read_manifest(folder)
    if (folder / GGUF_FILE).is_file():
        if llama_cpp.available():
            return _llama_cpp_predictor(folder, manifest, threads, batch_size)
        log.info("llama.cpp is not installed, so transformers runs %s dequantised to fp32: %s", GGUF_FILE,
                 llama_cpp.HOW_TO_ADD)
    task, labels = _task_and_labels(folder, manifest)
    if task not in PREDICTORS:
        raise LmcError(f"{folder} is a {task} model, which predict and serve do not take yet")
    model, tokenizer = _model_and_tokenizer(folder, task, threads)
    runtime = _runtime(folder)
    card = ModelCard(run=str(folder), task=task, runtime=runtime, precision=_precision(folder, manifest),
                     labels=labels, max_length=_max_length(manifest, task, model, tokenizer), params=count_params(model),
                     has_pair=task == "question-answering" or bool(manifest.task and manifest.task.has_pair))
    return PREDICTORS[task](model, tokenizer, card, batch_size)
