"""Shared fixtures: a tiny WordPiece tokenizer, tiny random models (hidden 32, 2 layers, 4 heads), tiny data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
TIERS = ("unit", "integration", "distributed", "slow")  # test folders, each its own pytest marker


def pytest_collection_modifyitems(config, items):
    """Mark each test with its folder's tier, so `-m unit` (the edit loop) or `-m "not distributed"` select by it."""
    for item in items:
        tier = next((part for part in Path(str(item.fspath)).parts if part in TIERS), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def fp32_training_everywhere():
    """--precision auto trains in bf16 on CPUs with AMX or AVX512-BF16; the suite's expectations (exact resume, cache
    equality, accuracy floors on tiny models) are set in fp32, so every machine runs them in fp32."""
    from lmcompress.training import loop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "cpu_has_bf16", lambda: False)
        yield


FILLER = ["the", "movie", "film", "was", "a", "plot", "and", "acting", "really", "quite", "story", "very"]


def make_sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Separable toy sentiment: the label is given by which word list the sentence uses."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


BERT_TEMPLATE = ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", ("[CLS]", "[SEP]"))  # single, pair, marks


def word_pieces(vocab: dict[str, int], unk: str, single: str, pair: str, marks: tuple[str, str]):
    """A BERT-style WordPiece tokenizer (lower-cased, split on whitespace and punctuation) over `vocab`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=[(m, vocab[m]) for m in marks])
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab_list = specials + POSITIVE + NEGATIVE + FILLER + letters + [f"##{c}" for c in letters]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = word_pieces(vocab, "[UNK]", *BERT_TEMPLATE)
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def same_pieces_tokenizer_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """The tiny tokenizer's word pieces under other ids and MPNet's special tokens (<s> ... </s>): what MPNet's
    tokenizer is to BERT's uncased WordPiece."""
    from transformers import AutoTokenizer, MPNetTokenizerFast

    bert = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    pieces = [piece for piece, _ in sorted(bert.get_vocab().items(), key=lambda item: -item[1])
              if piece not in bert.all_special_tokens]  # reversed: every id differs
    vocab = {piece: i for i, piece in enumerate(["<s>", "<pad>", "</s>", "<unk>", *pieces, "<mask>"])}
    tok = word_pieces(vocab, "<unk>", "<s> $A </s>", "<s> $A </s> </s> $B </s>", ("<s>", "</s>"))
    fast = MPNetTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                              sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                              model_max_length=128)
    out = tmp_path_factory.mktemp("same_pieces_tokenizer")
    fast.save_pretrained(out)
    return out


def _tiny_bert(tokenizer_dir: Path, out: Path, seed: int, hidden: int, layers: int, ffn: int) -> Path:
    """A headless random BertModel (4 heads) saved with the tokenizer of `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=ffn, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def same_pieces_student(same_pieces_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random BertModel on `same_pieces_tokenizer_dir`: another vocabulary whose positions line up with the
    tiny teacher's."""
    return _tiny_bert(same_pieces_tokenizer_dir, tmp_path_factory.mktemp("same_pieces_student"), 1, 16, 1, 24)


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A headless tiny BertModel checkpoint (like minilm-l6, which ships without task heads)."""
    return _tiny_bert(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_bert"), 0, 32, 2, 37)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sentiment.csv"
    pd.DataFrame(make_sentiment_rows(240)).to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def tiny_teacher_run(tiny_bert_dir, sentiment_csv, tmp_path_factory) -> Path:
    """A fine-tuned tiny teacher run made through the real CLI (shared by integration tests)."""
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("runs") / "teacher"
    code = main(["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out", str(out),
                 "--epochs", "4", "--batch-size", "16", "--learning-rate", "3e-3", "--max-length", "32",
                 "--log-every-steps", "1", "--warmup-ratio", "0", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """40 documents of 2-6 sentences, blank line between documents (BERT's corpus format)."""
    rng = random.Random(0)
    blocks = []
    for _ in range(40):
        sentences = [" ".join(rng.choices(FILLER + POSITIVE + NEGATIVE, k=rng.randint(4, 9))).capitalize() + "."
                     for _ in range(rng.randint(2, 6))]
        blocks.append("\n".join(sentences))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def clm_teacher(corpus, tmp_path_factory):
    """A tiny GPT-2 pre-trained a few steps on the corpus (vocabulary trained on it)."""
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("clm") / "teacher"
    code = main(["pretrain", "--model", "gpt2-2l-32h-4a", "--data", str(corpus), "--out", str(out), "--max-length",
                 "32", "--batch-size", "8", "--max-steps", "20", "--learning-rate", "3e-3", "--quiet", "--cache-dir",
                 str(out.parent / "cache"), "--objective", "clm", "--train-tokenizer", "300"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def own_vocab_encoder(corpus, tmp_path_factory):
    """A tiny 2-layer BERT with a WordPiece vocabulary of its own (trained on the corpus), pre-trained 2 steps: a
    donor or student whose tokenizer is not the teacher's."""
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("own-vocab") / "donor"
    code = main(["pretrain", "--model", "bert-2l-32h-4a", "--train-tokenizer", "150", "--data", str(corpus), "--out",
                 str(out), "--max-steps", "2", "--max-length", "32", "--quiet"])
    assert code == 0
    return out
