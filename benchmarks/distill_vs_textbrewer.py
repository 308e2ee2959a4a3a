"""lmcompress distill vs TextBrewer 0.2.1 on the same teacher, student init, data, epochs and losses, in one process.

Setup (shared by every contender):
  teacher  = a fine-tuned minilm-l6 run (default runs/teacher, made by `lmcompress finetune`)
  student  = the teacher's first 2 layers (384 hidden), built once and deep-copied for each contender
  data     = the teacher's rotten-tomatoes train split, max length 64, batch 32, the same padding collator
             (each tool shuffles with its own seeded sampler, so the batch order differs)
  losses   = 0.5 * hard-label CE + 0.5 * T^2 * soft CE (T=4) + masked hidden MSE on layers 1-2 (mean)
  optimiser= AdamW lr 1e-4, no weight decay, linear decay, 5 epochs, batch 32 (lmcompress: torch's fused AdamW;
             TextBrewer runs twice, with torch's default AdamW and with the fused one)
TextBrewer's soft CE has no T^2 factor, so it gets kd_loss_weight = 0.5 * T^2 to optimise the identical loss.
`lmcompress_defaults` is `lmcompress distill --teacher T --student pick=0,1` with every other option at its default
(5 epochs, lr 1e-4, KL logit KD, teacher cache, --precision and --teacher-precision auto: bf16 where the CPU has AMX
or AVX512-BF16, length-grouped batches): what a user who sets nothing gets; `_hidden` adds `--hidden-weight 1`,
`_ungrouped` `--no-group-by-length`, `_last_epoch` `--no-keep-best` (TextBrewer tests its last epoch), `_fp32`
`--precision fp32 --teacher-precision fp32` (as TextBrewer computes); `--seed` is passed to every lmcompress
contender, and `--set KEY=VALUE` (a `distill` option) to every `lmcompress_defaults*` one, whose validation accuracy
(of the epoch kept) is recorded to choose settings on.
The `lmcompress_*` contenders (not `_defaults`) call the library's in-memory `distill_model` on the very rows,
collator and student init TextBrewer gets. `lmcompress_fp32_textbrewer_order` trains with TextBrewer's settings,
its batch order and its dropout masks (the same seed) and the teacher run live: TextBrewer's computation step by
step in lmcompress's loop, so the two should agree to rounding; `_cached` reads the teacher from the cache
instead (hidden states kept in fp16).
`--contenders` runs a subset (bf16 contenders are emulated, and slow, on CPUs without bf16 kernels).

    pip install -e ".[bench]"   # textbrewer==0.2.1 + tensorboard
    .venv/bin/python benchmarks/distill_vs_textbrewer.py --teacher runs/teacher --epochs 5

Writes benchmarks/results/raw/distill_vs_textbrewer.json and benchmarks/results/distill_vs_textbrewer.md (or `--name`).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from lmcompress.config import DataConfig, DistillConfig, DistillLossConfig, TrainConfig, flat_to_nested, from_dict
from lmcompress.data import load_task
from lmcompress.data.tokenize import collator, tokenize_frame
from lmcompress.distillation.cache import TeacherCache, teacher_cache_root, teacher_fingerprint
from lmcompress.distillation.components import intermediate_needs, teacher_compute_precision
from lmcompress.distillation.train import DistillSettings, distill_model
from lmcompress.stages.distill import distill
from lmcompress.surgery.student import build_student, parse_spec
from lmcompress.machine import processor
from lmcompress.training import resolve_precision
from lmcompress.runkinds.task import predict
from lmcompress.scores import task_metrics
from lmcompress.models.load import load_tokenizer, load_trained_classifier
from lmcompress.runs.manifest import read_manifest

RESULTS = Path(__file__).parent / "results"


def textbrewer_loader(rows, batch_size: int, seed: int, collate=None) -> DataLoader:
    """The shuffled loader TextBrewer is handed; `textbrewer_batch_order` replays its order in lmcompress's loop."""
    return DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def textbrewer_run(teacher, student, train_set, collate, tokenizer, task_data, args, fused: bool = False) -> dict:
    """TextBrewer trains with the optimizer its user passes: torch's default AdamW, or (fused) the one-kernel AdamW
    that lmcompress uses, so the table shows how much of the gap that choice alone explains."""
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"],
                "losses": [outputs.loss]}

    loader = textbrewer_loader(train_set, 32, args.seed, collate)
    work = Path(tempfile.mkdtemp(prefix="textbrewer-"))
    train_config = TrainingConfig(device="cpu", log_dir=str(work / "logs"), output_dir=str(work / "out"),
                                  ckpt_frequency=1, ckpt_epoch_frequency=args.epochs)  # save only at the end
    matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 0.5}
               for s, t in ((1, 1), (2, 2))]
    distill_config = DistillationConfig(temperature=4, kd_loss_type="ce", kd_loss_weight=0.5 * 16,
                                        hard_label_weight=0.5, intermediate_matches=matches)
    teacher.config.output_hidden_states = student.config.output_hidden_states = True
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0, **({"fused": True} if fused else {}))
    steps = len(loader) * args.epochs
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=adaptor, adaptor_S=adaptor)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with distiller:
        distiller.train(optimizer, loader, num_epochs=args.epochs, scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": 0, "num_training_steps": steps}, max_grad_norm=1.0,
                        batch_postprocessor=dict)  # TextBrewer wants a plain dict, not a BatchEncoding
    wall = time.perf_counter() - start
    teacher.config.output_hidden_states = student.config.output_hidden_states = False
    shutil.rmtree(work, ignore_errors=True)
    logits, labels = predict(student, tokenize_frame(task_data.splits["test"], tokenizer, 64), collate, 64)
    return {"wall_time_s": round(wall, 1), "test": task_metrics("classification", logits, labels),
            "version": textbrewer.__version__, "fused_adamw": fused}


class ReplayedOrder(torch.utils.data.Sampler):
    """Epoch e yields orders[e]: the rows in the order another loader produced them."""

    def __init__(self, orders: list[list[int]]):
        self.orders, self.epoch = orders, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.orders[self.epoch])

    def __len__(self) -> int:
        return len(self.orders[0])


def textbrewer_batch_order(seed: int, epochs: int, batch_size: int):
    """The batch order of TextBrewer's loader (`textbrewer_run`), for lmcompress's training loop (distill's
    `batch_order`). With the same seed both draw the same dropout masks too (fit seeds torch as that run does just
    before training, and validation runs on a fork of the random stream), so the two runs make the same computation
    step by step."""
    def order(rows: int) -> ReplayedOrder:
        shuffled = textbrewer_loader(range(rows), batch_size, seed)  # row numbers, same order
        return ReplayedOrder([[i for batch in shuffled for i in batch.tolist()] for _ in range(epochs)])

    return order


@dataclass
class Shared:
    """What every contender starts from: the teacher, the student init (deep-copied per contender), the same
    tokenised training rows and collator, and the test rows."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    train_set: object
    collate: object
    test_set: object


def lmcompress_run(args, shared: Shared, cache_dir: Path, precision: str, teacher_precision: str,
                   group_by_length: bool = False, textbrewer_order: bool = False, cache: bool = True) -> dict:
    """TextBrewer's settings in lmcompress's library call (`distill_model`, in memory, on TextBrewer's very rows
    and student init); `textbrewer_order`: also its batch order and dropout masks. Without `cache` the teacher runs
    live on every step, as in TextBrewer (the cache keeps hidden states in fp16)."""
    settings = DistillSettings(
        loss=DistillLossConfig(temperature=4.0, alpha=0.5, kd_kind="ce", hidden_weight=1.0, layer_map="1:1,2:2"),
        train=TrainConfig(epochs=float(args.epochs), batch_size=32, learning_rate=1e-4, weight_decay=0.0,
                          warmup_ratio=0.0, max_grad_norm=1.0, precision=precision, seed=args.seed,
                          checkpoint_every_steps=10_000, keep_best=False, group_by_length=group_by_length),
        teacher_precision=teacher_precision)
    teacher, student = copy.deepcopy(shared.teacher), copy.deepcopy(shared.student)
    outputs = None
    if cache:  # what the stage builds: logits plus the hidden states the loss reads, per training row
        needs = intermediate_needs(student, teacher, settings.loss, [1, 2])
        outputs = TeacherCache(teacher_cache_root(str(cache_dir)), teacher_fingerprint(args.teacher),
                               shared.train_set["input_ids"], teacher.config.num_labels, needs.hidden,
                               teacher.config.hidden_size, precision=teacher_compute_precision(teacher_precision))
    order = textbrewer_batch_order(args.seed, args.epochs, 32) if textbrewer_order else None
    start = time.perf_counter()
    result = distill_model(teacher, student, shared.train_set, shared.collate, settings, cache=outputs,
                           batch_order=order, description="lmcompress")
    wall = time.perf_counter() - start
    logits, labels = predict(result.student, shared.test_set, shared.collate, 64)
    return {"wall_time_s": round(wall, 1), "train_loop_s": round(result.fit.wall_time_s, 1),
            "test": task_metrics("classification", logits, labels), "precision": precision,
            "teacher_precision": teacher_precision, "group_by_length": group_by_length,
            "textbrewer_order": textbrewer_order, "teacher_outputs": "cached" if cache else "live",
            "cache": outputs.stats() if outputs is not None else None}


def lmcompress_defaults_run(args, out: Path, cache_dir: Path, flags: dict) -> dict:
    """`lmcompress distill --teacher T --student pick=0,1` plus `flags` (flat option names, as the Python API)."""
    nested = flat_to_nested(DistillConfig, {"teacher": str(args.teacher), "student": "pick=0,1", "out": str(out),
                                            "overwrite": True, "cache_dir": str(cache_dir), **flags})
    cfg = from_dict(DistillConfig, nested)
    start = time.perf_counter()
    metrics = distill(cfg)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "lmcompress.json").read_text())
    train = manifest["train"]
    kept = train["history"][(train.get("best_epoch") or len(train["history"])) - 1]  # the epoch whose weights were kept
    return {"wall_time_s": round(wall, 1), "train_loop_s": train["wall_time_s"], "flags": flags,
            "validation_accuracy": kept["accuracy"],
            "test": metrics["metrics"], "precision": {"no": "fp32"}.get(resolve_precision(cfg.train.precision), "bf16"),
            "epochs": cfg.train.epochs, "hidden_weight": manifest["config"]["loss"]["hidden_weight"],
            "group_by_length": cfg.train.group_by_length,
            "cache": manifest["teacher_cache"]}


DEFAULTS_NOTE = ("`lmcompress_defaults` sets nothing but the student, so its losses and optimiser are its own defaults: "
                 "logit KD (KL, T=4, alpha 0.5) without the hidden-state MSE, weight decay 0.01, 10% warm-up, the "
                 "best epoch on validation kept, length-grouped batches, `--precision auto` and `--teacher-precision "
                 "auto`; `_hidden` adds `--hidden-weight 1` (the hidden-state MSE on the copied layers), `_ungrouped` "
                 "`--no-group-by-length`, `_last_epoch` `--no-keep-best`, `_fp32` `--precision fp32 --teacher-precision fp32`.")
FP32, BF16 = {"precision": "fp32", "teacher_precision": "fp32"}, {"precision": "bf16", "teacher_precision": "bf16"}
LMCOMPRESS = {"lmcompress_fp32": FP32, "lmcompress_bf16": BF16,  # name -> lmcompress_run's settings
              "lmcompress_bf16_grouped": BF16 | {"group_by_length": True},
              "lmcompress_fp32_textbrewer_order": FP32 | {"textbrewer_order": True, "cache": False},
              "lmcompress_fp32_textbrewer_order_cached": FP32 | {"textbrewer_order": True}}
DEFAULTS = {"lmcompress_defaults": {}, "lmcompress_defaults_hidden": {"hidden_weight": 1.0},
            "lmcompress_defaults_ungrouped": {"group_by_length": False},
            "lmcompress_defaults_last_epoch": {"keep_best": False},
            "lmcompress_defaults_fp32": {"precision": "fp32", "teacher_precision": "fp32"}}  # name -> what it changes
ALL = ("textbrewer", "textbrewer_fused_adamw", *LMCOMPRESS, *DEFAULTS)


def parse_setting(text: str) -> tuple[str, object]:
    """`learning_rate=2e-4` -> ("learning_rate", 0.0002): numbers and true/false parsed, anything else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("runs/teacher"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-textbrewer", action="store_true")
    parser.add_argument("--contenders", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    parser.add_argument("--name", default="distill_vs_textbrewer", help="results/raw/NAME.json, results/NAME.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=parse_setting,
                        help="an option of `distill` (its Python name, e.g. learning_rate=2e-4) for every "
                             "lmcompress_defaults* contender; repeatable")
    args = parser.parse_args()
    chosen = set(args.contenders.split(","))
    if chosen - set(ALL):
        parser.error(f"unknown contender(s): {', '.join(sorted(chosen - set(ALL)))}")

    recorded = read_manifest(args.teacher).data_options
    data_cfg = from_dict(DataConfig, {**recorded, "max_length": 64})
    task_data = load_task(data_cfg)
    tokenizer = load_tokenizer(args.teacher)
    teacher = load_trained_classifier(args.teacher, task_data.labels, False).eval()
    student, _ = build_student(teacher, parse_spec("pick=0,1"))
    train_set = tokenize_frame(task_data.splits["train"], tokenizer, 64)
    collate = collator(tokenizer)
    test_set = tokenize_frame(task_data.splits["test"], tokenizer, 64)
    teacher_acc = task_metrics("classification", *predict(teacher, test_set, collate, 64))["accuracy"]
    shared = Shared(teacher, student, train_set, collate, test_set)

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": commit or None,
                     "teacher": str(args.teacher),
                     "teacher_test_accuracy": teacher_acc, "epochs": args.epochs, "threads": torch.get_num_threads(),
                     "machine": platform.platform(), "processor": processor(),
                     "lscpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout,
                     "torch": torch.__version__, "train_examples": len(train_set),
                     "contenders": {}}
    # The teacher's max length is 64 here for every contender (the data config above); the lmcompress runs
    # re-read it from the teacher run, so record it to be sure both saw the same inputs.
    if recorded.get("max_length") != 64:
        print(f"note: teacher was trained with max_length {recorded.get('max_length')}; benchmark uses 64 for all")
    if not args.skip_textbrewer:
        for name, fused in (("textbrewer", False), ("textbrewer_fused_adamw", True)):
            if name not in chosen:
                continue
            results["contenders"][name] = textbrewer_run(copy.deepcopy(teacher), copy.deepcopy(student), train_set,
                                                         collate, tokenizer, task_data, args, fused)
            print(json.dumps(results["contenders"][name]))
    for name, settings in LMCOMPRESS.items():
        if name not in chosen:
            continue
        cache_dir = work / f"cache-{name}"  # a cold cache each: the teacher's first epoch is in the timing
        results["contenders"][name] = lmcompress_run(args, shared, cache_dir, **settings)
        print(json.dumps(results["contenders"][name]))
    for name, flags in DEFAULTS.items():
        if name in chosen:
            extra = dict(args.set)
            label = name + (f"[{','.join(f'{k}={v}' for k, v in extra.items())}]" if extra else "")
            results["contenders"][label] = lmcompress_defaults_run(args, work / name, work / f"cache-{name}",
                                                                   flags | extra | {"seed": args.seed})
            print(json.dumps(results["contenders"][label]))
    shutil.rmtree(work, ignore_errors=True)

    tb = results["contenders"].get("textbrewer")
    tb_fused = results["contenders"].get("textbrewer_fused_adamw")
    rows = []
    for name, res in results["contenders"].items():
        ratio = res["wall_time_s"] / tb["wall_time_s"] if tb else None
        ratio_fused = res["wall_time_s"] / tb_fused["wall_time_s"] if tb_fused else None
        res["wall_time_vs_textbrewer"] = round(ratio, 3) if ratio else None
        res["wall_time_vs_textbrewer_fused_adamw"] = round(ratio_fused, 3) if ratio_fused else None
        validation = f"{res['validation_accuracy']:.4f}" if "validation_accuracy" in res else ""
        rows.append(f"| {name} | {validation} | {res['test']['accuracy']:.4f} | {res['test']['accuracy'] / teacher_acc:.1%} | "
                    f"{res['wall_time_s']:.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{'' if ratio_fused is None else f'{ratio_fused:.2f}x'} |")
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"# Distillation wall time: lmcompress vs TextBrewer {tb['version'] if tb else ''}", "",
          f"Command: `{results['command']}` (commit {results['commit']})  ",
          f"Machine: {results['machine']}, {results['threads']} threads, "
          f"torch {results['torch']}  ", f"Processor: {results['processor']['model']} "
          f"({', '.join(results['processor']['isa'])})  ",
          f"Teacher {args.teacher} test accuracy {teacher_acc:.4f}; student = teacher layers 0-1; "
          f"{args.epochs} epochs over {len(train_set)} examples; same data, batch size, padding collator and losses "
          "(each tool shuffles with its own seeded sampler; `_grouped` batches similar lengths together, "
          "`--group-by-length`).", "",
          "lmcompress uses torch's fused AdamW; `textbrewer_fused_adamw` hands TextBrewer the same optimizer.", "",
          *([DEFAULTS_NOTE, ""] if chosen & set(DEFAULTS) else []),
          "| contender | validation accuracy (kept epoch) | test accuracy | retention | wall time (s) | vs TextBrewer | "
          "vs TextBrewer + fused AdamW |", "|---|---|---|---|---|---|---|", *rows, ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
