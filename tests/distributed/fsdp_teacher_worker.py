"""Run by test_multiprocess.py under `torchrun --nproc_per_node 2`: a teacher sharded with `--fsdp`'s code must
give the whole teacher's outputs, and the callers must keep every rank's sharded forwards in step (a rank that
skips one would hang the other). Exits non-zero (an AssertionError) on the first difference; prints OK on rank 0.

    torchrun --nproc_per_node 2 tests/distributed/fsdp_teacher_worker.py CACHE_ROOT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from lmcompress.distillation.cache import TeacherCache
from lmcompress.distillation.sharding import is_sharded, shard_teacher
from lmcompress.distillation.components import Needs, TeacherOutputs, fill_teacher_cache
from lmcompress.distributed import on_all_processes, on_every_process, process_state


def main(cache_root: Path) -> None:
    state = process_state()
    rank = state.process_index
    torch.manual_seed(0)  # the same weights on both ranks, as when both load one checkpoint
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=32, num_labels=3)
    teacher = BertForSequenceClassification(config).eval()
    whole = copy.deepcopy(teacher)

    # rows of different lengths, a different number on each rank below
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(5, 60, (n,), generator=generator).tolist() for n in (4, 9, 6, 12, 5, 7, 11)]

    def batch_of(indices: list[int]) -> dict[str, torch.Tensor]:
        width = max(len(rows[i]) for i in indices)
        ids = torch.zeros(len(indices), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(indices):
            ids[b, :len(rows[i])], mask[b, :len(rows[i])] = torch.tensor(rows[i]), 1
        return {"input_ids": ids, "attention_mask": mask, "idx": torch.tensor(indices)}

    info = shard_teacher(teacher)
    assert is_sharded(teacher) and info is not None
    assert info["processes"] == 2 and info["params"] == sum(p.numel() for p in whole.parameters())
    assert info["params_per_process"] < 0.6 * info["params"], info  # about half each (biases round up)
    assert teacher.get_input_embeddings().weight.to_local().shape[0] == 30  # each rank holds 30 of the 60 rows

    # 1. a different batch on each rank: the sharded forward equals the whole teacher's, bitwise, and the
    # embeddings are sharded again afterwards (FSDP would keep the root gathered, waiting for a backward)
    mine = batch_of([0, 1, 2] if rank == 0 else [3, 4])
    inputs = {k: v for k, v in mine.items() if k != "idx"}
    with torch.no_grad():
        got = teacher(**inputs, output_hidden_states=True)
        want = whole(**inputs, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states, strict=True))
    assert teacher.get_input_embeddings().weight.to_local().shape[0] == 30

    # 2. the teacher pass that fills the cache: of 7 rows in batches of 3, rank 0 takes 4 (2 batches) and rank 1
    # three (1 batch), so rank 1 must run the teacher once more and keep nothing
    needs = Needs(hidden=(0, 3), attentions=False, qkv=False)
    cache = on_every_process(lambda: TeacherCache(cache_root, "worker", rows, 3, needs.hidden, 32))
    train_set = [{"input_ids": r, "idx": i} for i, r in enumerate(rows)]

    def collate(examples):
        return batch_of([e["idx"] for e in examples])

    outputs = TeacherOutputs(teacher, cache, needs, "fp32")
    fill_teacher_cache(cache, train_set, rows, collate, outputs, batch_size=3)
    assert cache.complete().all()
    for i in range(len(rows)):
        one = batch_of([i])
        with torch.no_grad():
            reference = whole(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                              output_hidden_states=True)
        logits, hidden = cache.read(one["idx"], len(rows[i]))
        torch.testing.assert_close(logits, reference.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(hidden[3], reference.hidden_states[3].half().float(), rtol=0, atol=2e-3)

    # 3. training batches where one rank has its rows cached and the other not: both run the teacher; the cached
    # rank keeps its cached values and writes nothing
    fresh = on_every_process(lambda: TeacherCache(cache_root, "worker-2", rows, 3, needs.hidden, 32))
    if rank == 0:
        first = batch_of([0, 1])
        with torch.no_grad():
            out = whole(input_ids=first["input_ids"], attention_mask=first["attention_mask"],
                        output_hidden_states=True)
        fresh.write(first["idx"], out.logits, {i: out.hidden_states[i] for i in needs.hidden})
    state.wait_for_everyone()
    mine = batch_of([0, 1] if rank == 0 else [5, 6])
    misses_before = fresh.misses
    logits, hidden, _ = TeacherOutputs(teacher, fresh, needs, "fp32")(
        {k: v for k, v in mine.items() if k != "idx"}, mine["idx"])
    assert fresh.misses == misses_before + (0 if rank == 0 else 2)
    with torch.no_grad():
        want = whole(input_ids=mine["input_ids"], attention_mask=mine["attention_mask"]).logits
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
    assert fresh.has(mine["idx"])
    # every rank's rows cached now: nobody runs the teacher (no collective forward: this must not hang either)
    assert on_all_processes(fresh.has(mine["idx"]))
    TeacherOutputs(teacher, fresh, needs, "fp32")({k: v for k, v in mine.items() if k != "idx"}, mine["idx"])
    state.wait_for_everyone()
    if rank == 0:
        print("OK")


if __name__ == "__main__":
    from lmcompress.distributed import close_process_group

    main(Path(sys.argv[1]))
    close_process_group()
