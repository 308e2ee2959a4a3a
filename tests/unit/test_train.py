import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lmcompress.config import TrainConfig
from lmcompress.data.tokenize import collator, tokenize_frame
from lmcompress.errors import LmcError
from lmcompress.runkinds.task import predict
from lmcompress.scores import task_metrics
from lmcompress.models.load import load_for_sequence_classification, load_tokenizer, resolve
from lmcompress.models.outputs import forward
from lmcompress.training import fit, resolve_precision
from lmcompress.training.samplers import LengthGroupedEpochSampler, example_lengths

from ..conftest import make_sentiment_rows


def _setup(tiny_tokenizer_dir, n=96):
    source = resolve("bert-2l-32h-4a", tokenizer=str(tiny_tokenizer_dir))
    tok = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tok, 2, ["neg", "pos"], regression=False, seed=0)
    frame = pd.DataFrame(make_sentiment_rows(n))
    frame["label"] = (frame["label"] == "pos").astype("int64")
    data = tokenize_frame(frame, tok, 32)
    return model, tok, data


def _loss(model, batch):
    return forward(model, batch).loss


def _fit(model, tok, data, cfg, folder, resume=False, loss_fn=_loss):
    def evaluate_fn(m):
        logits, labels = predict(m, data, collator(tok), 32)
        return task_metrics("classification", logits, labels)

    return fit(model, data, collator(tok), cfg, loss_fn=loss_fn, evaluate_fn=evaluate_fn, monitor="accuracy",
               higher_is_better=True, run_folder=folder, resume=resume)


def test_loss_falls_and_history_is_kept(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)
    # 8 epochs: after 4, some seeds' batch orders still sit at chance on this random tiny model
    cfg = TrainConfig(epochs=8, batch_size=16, learning_rate=3e-3, log_every_steps=1, warmup_ratio=0.0)
    result = _fit(model, tok, data, cfg, tmp_path)
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert result.steps == 48 and len(result.state.history) == 8
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.2  # from ~0.69 (chance) clearly down
    assert result.state.best_value >= 0.9  # separable toy data


@pytest.mark.parametrize("group_by_length", [False, True])
def test_interrupted_run_resumes_to_identical_weights(tiny_tokenizer_dir, tmp_path, group_by_length):
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=1e-3, checkpoint_every_steps=4, keep_best=False,
                      group_by_length=group_by_length)

    model, tok, data = _setup(tiny_tokenizer_dir)
    _fit(model, tok, data, cfg, tmp_path / "straight")
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    calls = {"n": 0}

    def crash_at_step_9(m, batch):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # what SIGTERM/Ctrl-C become inside the loop
        return _loss(m, batch)

    model, tok, data = _setup(tiny_tokenizer_dir)
    with pytest.raises(LmcError, match="interrupted at step 8; checkpoint saved"):
        _fit(model, tok, data, cfg, tmp_path / "resumed", loss_fn=crash_at_step_9)
    model, tok, data = _setup(tiny_tokenizer_dir)  # a fresh process: new model, weights from the checkpoint
    result = _fit(model, tok, data, cfg, tmp_path / "resumed", resume=True)
    assert result.steps == 18
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight[key]), key


def test_validation_never_changes_what_training_learns(tiny_tokenizer_dir, tmp_path):
    """Validating after every step or only after each epoch trains the same weights: validation (whose DataLoader
    draws a seed from torch's random stream) must leave the dropout masks of training alone."""
    trained = []
    for every in (None, 1):
        model, tok, data = _setup(tiny_tokenizer_dir)
        cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, keep_best=False, eval_every_steps=every)
        result = _fit(model, tok, data, cfg, tmp_path / str(every))
        trained.append((len(result.state.history), model.state_dict()))
    (epochs_only, sparse), (every_step, dense) = trained
    assert (epochs_only, every_step) == (2, 12)  # 6 steps an epoch: 5 mid-epoch evaluations each, then the epoch's
    for key, value in sparse.items():
        assert torch.equal(value, dense[key]), key


@pytest.mark.parametrize("group_by_length", [False, True])
def test_runs_at_neighbouring_seeds_share_no_epoch_order(tiny_tokenizer_dir, tmp_path, group_by_length):
    """Seeds 1 and 2 are two draws: if epoch e's order came from seed + e, seed 1's second epoch would be seed 2's
    first, and a comparison over seeds would count correlated runs as independent."""
    epochs = {}
    for seed in (1, 2):
        model, tok, data = _setup(tiny_tokenizer_dir)
        batches = []

        def recording_loss(m, batch, batches=batches):
            batches.append(tuple(map(tuple, batch["input_ids"].tolist())))
            return _loss(m, batch)

        cfg = TrainConfig(epochs=2, batch_size=16, seed=seed, keep_best=False, group_by_length=group_by_length)
        _fit(model, tok, data, cfg, tmp_path / f"{group_by_length}-{seed}", loss_fn=recording_loss)
        assert len(batches) == 12  # 96 rows, 6 batches an epoch
        epochs[seed] = (batches[:6], batches[6:])
    assert epochs[1][0] != epochs[1][1]  # each epoch its own order
    assert epochs[2][0] not in epochs[1] and epochs[1][1] not in epochs[2]


def test_a_checkpoint_from_the_old_batch_order_resumes_with_a_warning(tiny_tokenizer_dir, tmp_path, caplog):
    """Checkpoints written when shuffled epochs were ordered by seed + epoch cannot replay their batches exactly."""
    cfg = TrainConfig(epochs=2, batch_size=16, checkpoint_every_steps=4, keep_best=False)

    calls = {"n": 0}

    def crash_at_step_5(m, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return _loss(m, batch)

    model, tok, data = _setup(tiny_tokenizer_dir)
    with pytest.raises(LmcError, match="interrupted at step 4"):
        _fit(model, tok, data, cfg, tmp_path, loss_fn=crash_at_step_5)
    state_file = next(tmp_path.rglob("state.json"))
    saved = json.loads(state_file.read_text())
    assert saved["loop"].pop("batch_order") == "seed*1000003+epoch"
    state_file.write_text(json.dumps(saved))  # as written before the batch order changed
    model, tok, data = _setup(tiny_tokenizer_dir)
    with caplog.at_level("WARNING", logger="lmcompress"):
        assert _fit(model, tok, data, cfg, tmp_path, resume=True).steps == 12
    assert "ordered by seed + epoch" in caplog.text


def test_keep_best_restores_best_epoch(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3)
    result = _fit(model, tok, data, cfg, tmp_path)
    best = load_file(str(tmp_path / "checkpoint" / "best.safetensors"))
    state = model.state_dict()
    assert result.state.best_epoch in (1, 2)
    assert all(torch.equal(best[k], state[k]) for k in best)


def test_nan_loss_stops_with_a_clear_error(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)

    def nan_loss(m, batch):
        return _loss(m, batch) * float("nan")

    with pytest.raises(LmcError, match=r"loss became nan at step 1 \(epoch 1\); lower --learning-rate"):
        _fit(model, tok, data, TrainConfig(epochs=1, batch_size=16), tmp_path, loss_fn=nan_loss)


def test_nan_policy_skip_skips_a_few_batches_then_stops(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)
    calls = {"n": 0}

    def sometimes_nan(m, batch):
        calls["n"] += 1
        loss = _loss(m, batch)
        return loss * float("nan") if calls["n"] in (2, 5) else loss

    cfg = TrainConfig(epochs=1, batch_size=16, nan_policy="skip", max_skipped_batches=2, keep_best=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _fit(model, tok, data, cfg, tmp_path / "skip", loss_fn=sometimes_nan)
    assert result.state.skipped_batches == 2 and result.steps == 4  # 6 batches, 2 skipped
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    model, tok, data = _setup(tiny_tokenizer_dir)
    calls["n"] = 0
    with pytest.raises(LmcError, match="after 1 skipped batches"):
        _fit(model, tok, data, TrainConfig(epochs=1, batch_size=16, nan_policy="skip", max_skipped_batches=1),
             tmp_path / "too-many", loss_fn=sometimes_nan)


def test_grad_accumulation_counts_optimizer_steps(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)
    result = _fit(model, tok, data, TrainConfig(epochs=1, batch_size=8, grad_accum_steps=3), tmp_path)
    assert result.steps == 4  # 12 batches / 3


def test_precision_resolution_on_cpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    from lmcompress.training import loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto") == "no"
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)  # AMX or AVX512-BF16
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(LmcError, match="fp16 needs a GPU"):
        resolve_precision("fp16")


def test_the_teacher_runs_in_bf16_where_training_would(monkeypatch):
    """--teacher-precision auto follows --precision auto: a bf16 teacher forward only where bf16 kernels exist."""
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    from lmcompress.distillation.components import teacher_autocast
    from lmcompress.training import loop

    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)

    def output_dtype(precision: str) -> torch.dtype:
        with torch.no_grad(), teacher_autocast(precision, "cpu"):
            return layer(x).dtype

    assert output_dtype("bf16") == torch.bfloat16 and output_dtype("fp32") == torch.float32
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert output_dtype("auto") == torch.float32
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert output_dtype("auto") == torch.bfloat16


def test_corrupt_checkpoint_on_resume(tiny_tokenizer_dir, tmp_path):
    model, tok, data = _setup(tiny_tokenizer_dir)
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(LmcError, match="corrupt or incomplete"):
        _fit(model, tok, data, TrainConfig(epochs=1, batch_size=16), tmp_path, resume=True)


def test_two_stages_with_different_precision_in_one_process(tiny_tokenizer_dir, tmp_path):
    """accelerate's state is process-wide; a bf16 stage after an fp32 one must still start (CPU autocast)."""
    model, tok, data = _setup(tiny_tokenizer_dir, n=32)
    _fit(model, tok, data, TrainConfig(epochs=1, batch_size=16, precision="fp32"), tmp_path / "a")
    model, tok, data = _setup(tiny_tokenizer_dir, n=32)
    seen = []

    def loss_under_autocast(m, batch):  # stages may call sub-modules directly: autocast must already be on
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(m, batch).loss

    result = _fit(model, tok, data, TrainConfig(epochs=1, batch_size=16, precision="bf16"), tmp_path / "b",
                  loss_fn=loss_under_autocast)
    assert result.steps == 2 and seen == [True, True]  # bf16 really applies inside the loss function


def test_a_kill_while_checkpointing_keeps_the_previous_checkpoint(tiny_tokenizer_dir, tmp_path, monkeypatch):
    """Files of the new checkpoint are written, then the process dies before state.json is renamed: resuming
    uses the previous complete checkpoint and still ends bitwise equal to an uninterrupted run."""
    import os

    import lmcompress.training.checkpoint as train_mod

    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, checkpoint_every_steps=4, keep_best=False,
                      log_every_steps=1)
    model, tok, data = _setup(tiny_tokenizer_dir)
    _fit(model, tok, data, cfg, tmp_path / "straight")
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    real_replace = os.replace
    commits = {"n": 0}

    def die_on_second_commit(src, dst):
        if str(dst).endswith("state.json"):
            commits["n"] += 1
            if commits["n"] == 2:
                raise SystemExit("killed")  # stands in for SIGKILL: nothing after this runs
        return real_replace(src, dst)

    monkeypatch.setattr(train_mod.os, "replace", die_on_second_commit)
    model, tok, data = _setup(tiny_tokenizer_dir)
    with pytest.raises(SystemExit):
        _fit(model, tok, data, cfg, tmp_path / "killed")
    monkeypatch.setattr(train_mod.os, "replace", real_replace)
    checkpoint = tmp_path / "killed" / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["loop"]["global_step"] == 4  # the first commit
    assert len(list(checkpoint.glob("model-*.safetensors"))) == 2  # the orphan of the dead save is still there

    model, tok, data = _setup(tiny_tokenizer_dir)
    result = _fit(model, tok, data, cfg, tmp_path / "killed", resume=True)
    assert result.steps == 12
    assert len(list(checkpoint.glob("model-*.safetensors"))) == 1  # orphans cleaned by the next commit
    logged = [json.loads(line)["step"] for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert logged == list(range(1, 13))  # steps 5-8 of the dead run were dropped, then redone once
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight[key]), key


def test_length_grouped_batches_pad_less_and_replay_per_epoch(tiny_tokenizer_dir):
    import random

    lengths = [random.Random(i).randint(3, 64) for i in range(400)]
    sampler = LengthGroupedEpochSampler(lengths, batch_size=8, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(400))  # every example once
    assert list(LengthGroupedEpochSampler(lengths, 8, seed=1)) == order  # (seed, epoch) fixes the order: resumable
    sampler.set_epoch(1)
    assert list(sampler) != order

    def padded_tokens(indices):
        return sum(8 * max(lengths[i] for i in indices[b:b + 8]) for b in range(0, len(indices), 8))

    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded_tokens(order) < 0.7 * padded_tokens(shuffled)

    _, tok, data = _setup(tiny_tokenizer_dir, n=10)
    assert example_lengths(data) == [len(ids) for ids in data["input_ids"]]
