"""Train a new vocabulary on a corpus with `tokenizers` (`lmcompress pretrain --train-tokenizer N`).

BERT and ALBERT get an uncased WordPiece vocab whose normaliser puts spaces around CJK characters, so Chinese text
gets a character-level vocabulary (what Chinese BERT uses); GPT-2 and RoBERTa get a byte-level BPE vocab. The
result is a transformers fast tokenizer that `AutoTokenizer.from_pretrained(run_dir)` loads alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from tokenizers import ByteLevelBPETokenizer, processors
from tokenizers.implementations import BertWordPieceTokenizer
from transformers import BertTokenizerFast, GPT2TokenizerFast, PreTrainedTokenizerFast, RobertaTokenizerFast

from ..errors import LmcError
from .corpora import Document

log = logging.getLogger("lmcompress")

WORDPIECE_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
GPT2_SPECIAL = ["<|endoftext|>"]


def _segments(documents: list[Document]) -> Iterator[str]:
    for document in documents:
        yield from document


def train_tokenizer(documents: list[Document], vocab_size: int, family: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer for `family` (bert | albert | roberta | gpt2) with about `vocab_size` entries."""
    if vocab_size < 100:
        raise LmcError(f"--train-tokenizer {vocab_size}: a vocabulary needs at least 100 entries")
    if family in ("bert", "albert"):
        trainer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
        # limit_alphabet = vocab size: a Chinese corpus has thousands of characters and each must stay a token
        trainer.train_from_iterator(_segments(documents), vocab_size=vocab_size, min_frequency=2,
                                    special_tokens=WORDPIECE_SPECIAL, limit_alphabet=vocab_size, show_progress=False)
        backend = trainer._tokenizer
        backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                           ("[CLS]", backend.token_to_id("[CLS]")))
        tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                                      pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
    elif family in ("gpt2", "roberta"):
        if vocab_size < 300:
            raise LmcError(f"--train-tokenizer {vocab_size}: a byte-level BPE vocabulary holds the 256 bytes plus "
                           "merges; give at least 300")
        trainer = ByteLevelBPETokenizer(add_prefix_space=False)
        special = GPT2_SPECIAL if family == "gpt2" else ROBERTA_SPECIAL
        trainer.train_from_iterator(_segments(documents), vocab_size=vocab_size, min_frequency=2,
                                    special_tokens=special, show_progress=False)
        backend = trainer._tokenizer
        if family == "gpt2":
            tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                          eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                          pad_token="<|endoftext|>")  # padding is masked by position anyway
        else:
            backend.post_processor = processors.RobertaProcessing(("</s>", backend.token_to_id("</s>")),
                                                                  ("<s>", backend.token_to_id("<s>")))
            tokenizer = RobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                             sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                             mask_token="<mask>")
    else:
        raise LmcError(f"--train-tokenizer supports bert, albert, roberta and gpt2 models, not {family}")
    log.info("trained a %s vocabulary of %d tokens", "WordPiece" if family in ("bert", "albert") else "byte-level BPE",
             len(tokenizer))
    return tokenizer
