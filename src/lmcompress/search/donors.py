"""Pre-trained donors for `auto`: small encoders installed offline that a student may start from instead of a cut of
the teacher (DistilBERT, MiniLM and TinyBERT students are general-distilled before they meet the task; a cut of a
fine-tuned teacher is not). A donor with its own tokenizer learns from the teacher's logits on the raw text."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel

from .. import catalog
from ..errors import LmcError
from ..models.families import check_max_length, family_of
from ..models.load import load_tokenizer, resolve
from ..models.presets import names_preset
from .shapes import Shape, donor_grid

log = logging.getLogger("lmcompress")


@dataclass(frozen=True)
class Donor:
    """A donor as the search uses it: what the user named, its folder and config, its size, and whether it reads
    text with the teacher's very tokenizer (then the hidden-state loss applies too)."""

    name: str  # the zoo name, folder or Hub id given (what a distill step's --student takes)
    label: str  # its name in candidate names and folders
    folder: Path
    config: Any
    params: int
    same_tokenizer: bool

    def shapes(self) -> list[Shape]:
        return donor_grid(self.label, self.config)

    def student_spec(self, shape: Shape) -> str:
        """The distill --student that makes `shape`: the donor whole, or cut to `shape.layers` of its layers."""
        whole = family_of(self.config).depth(self.config) == shape.layers
        return str(self.folder) if whole else f"{self.folder};layers={shape.layers}"


def _parameters(config) -> int:
    """Parameters of the encoder `config` describes, counted without allocating its weights."""
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModel.from_config(config).parameters())


def _donor(name: str, teacher_vocab: dict[str, int], max_length: int) -> Donor:
    if names_preset(name):
        raise LmcError(f"donor {name} is a preset (random weights); a donor is a pre-trained model: a zoo name, "
                       "folder or Hub id")
    source = resolve(name, role="donor")
    config = AutoConfig.from_pretrained(str(source.path), local_files_only=True)
    family = family_of(config)
    if family is None or family.name in ("gpt2", "llama") or family.shares_layers:
        raise LmcError(f"donor {name} is a {config.model_type}: a donor is an encoder with layers of its own (BERT, "
                       "RoBERTa, MPNet, DistilBERT, ...)")
    check_max_length(config, max_length, f"donor {name}: --seq-len")
    label = name if catalog.is_zoo_name(name) else source.path.resolve().name
    same = load_tokenizer(source.tokenizer_path).get_vocab() == teacher_vocab
    return Donor(name, label, source.path, config, _parameters(config), same)


def find_donors(spec: str, teacher_vocab: dict[str, int], teacher_config, max_length: int) -> list[Donor]:
    """`--donors`: none; NAME,… (zoo names, folders or Hub ids, each must load); or auto: every zoo encoder installed
    whose encoder is smaller than the teacher's (the one the teacher was fine-tuned from is as big: left out) and
    that reads texts of `max_length` tokens."""
    if spec == "none":
        return []
    if spec != "auto":
        donors = [_donor(name.strip(), teacher_vocab, max_length) for name in spec.split(",") if name.strip()]
        labels = [d.label for d in donors]
        if len(set(labels)) != len(labels):
            raise LmcError(f"--donors {spec}: two donors share the name {max(labels, key=labels.count)}; their "
                           "candidates would share a folder: rename one")
        return donors
    donors, teacher_params = [], _parameters(teacher_config)
    for name, entry in catalog.ENTRIES.items():
        if not 0 < entry.encoder_params < teacher_params or not entry.installed():
            continue
        try:
            donors.append(_donor(name, teacher_vocab, max_length))
        except Exception as exc:  # noqa: BLE001 (a donor the user did not name must not end the search)
            log.info("donor %s left out: %s", name, exc)
    log.info("donors: %s", ", ".join(f"{d.label} ({d.params / 1e6:.1f}M, %s tokenizer)" % (
        "the teacher's" if d.same_tokenizer else "its own") for d in donors) or "none smaller than the teacher")
    return donors
