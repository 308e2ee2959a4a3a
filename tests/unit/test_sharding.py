"""--fsdp pieces that need no launcher (the sharded runs themselves are in tests/distributed/test_multiprocess.py)."""

import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lmcompress.distillation.sharding import is_sharded, repeated_blocks, shard_teacher
from lmcompress.errors import LmcError


def test_the_layer_stack_is_found_in_each_family():
    bert = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=16, n_layer=2, n_head=2))
    assert repeated_blocks(bert) is bert.bert.encoder.layer
    assert repeated_blocks(gpt2) is gpt2.transformer.h
    with pytest.raises(LmcError, match="no list of layers to shard"):
        repeated_blocks(torch.nn.Linear(2, 2))


def test_in_one_process_the_teacher_stays_whole_with_a_warning(caplog):
    teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=32))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="lmcompress"):
        assert shard_teacher(teacher) is None
    assert "in one process the teacher stays whole" in caplog.text
    assert not is_sharded(teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
