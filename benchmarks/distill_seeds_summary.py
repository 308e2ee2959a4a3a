"""Test accuracy over random streams: lmcompress's defaults against TextBrewer's settings.

Each run of `distill_vs_textbrewer.py` is one draw of the random streams (batch order, dropout masks), which move
this 2-layer student by more than a point. This collects the runs named in DRAWS (all on the same demo teacher, all
fp32) and says whether the difference of the two means is resolved: Welch's t-test and its 95% interval. "Equal
accuracy" can only be shown within a margin: the defaults count as no worse when the one-sided 95% lower bound of
the difference is above -MARGIN (0.5 points, the accuracy loss the issue allows the teacher's fastest backend).

    python benchmarks/distill_seeds_summary.py

Writes benchmarks/results/raw/distill_seeds_summary.json and benchmarks/results/distill_seeds_summary.md.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from scipy import stats

RESULTS = Path(__file__).parent / "results"
TEXTBREWER, DEFAULTS = "TextBrewer's settings", "lmcompress defaults"
MARGIN = 0.005
# group -> (result file, contender): every draw with the same settings and teacher, whichever tool ran it.
# lmcompress_fp32 is TextBrewer's computation in lmcompress's loop, drawing lmcompress's own streams;
# lmcompress_fp32_textbrewer_order is the same loop replaying TextBrewer's batch order and dropout seed, which gives
# TextBrewer's own figure (0.8244 at seed 42): a draw of TextBrewer's streams. lmcompress_defaults on an AVX2-only
# processor runs in fp32 (no bf16 there); lmcompress_defaults_fp32 is the same computation forced to fp32 elsewhere.
DRAWS = {
    TEXTBREWER: [("distill_vs_textbrewer_epyc_seed42", "textbrewer"),
                 ("distill_vs_textbrewer_seed1", "textbrewer"),
                 ("distill_vs_textbrewer_seed2", "textbrewer"),
                 ("distill_vs_textbrewer_avx2_textbrewer_order_seed3", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_avx2_textbrewer_order_seed4", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_xeon_fp32_seed5", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_xeon_fp32_seed6", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_xeon_fp32_seed7", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_xeon_fp32_seed8", "lmcompress_fp32_textbrewer_order"),
                 ("distill_vs_textbrewer_avx2_fp32_seed42", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed1", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed3", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed4", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed5", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed6", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed7", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed8", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed9", "lmcompress_fp32")],
    DEFAULTS: [("distill_vs_textbrewer_avx2_defaults_seed42_forked_eval", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed1", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed2", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed3", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed4", "lmcompress_defaults"),
               ("distill_vs_textbrewer_xeon_fp32_seed5", "lmcompress_defaults_fp32"),
               ("distill_vs_textbrewer_xeon_fp32_seed6", "lmcompress_defaults_fp32"),
               ("distill_vs_textbrewer_xeon_fp32_seed7", "lmcompress_defaults_fp32"),
               ("distill_vs_textbrewer_xeon_fp32_seed8", "lmcompress_defaults_fp32")],
}
# Before commit 6b128f7 lmcompress drew a shuffled epoch's order from seed + epoch, so lmcompress_fp32 at seeds 1, 3,
# 4 and 5 shared epoch orders (seed 1's epochs were seeds 1-5, seed 3's 3-7...): not independent draws. The main test
# keeps the first of them (seed 1) and leaves the later ones out; the test over every draw is shown beside it.
# (lmcompress_defaults groups batches by length, whose order was drawn from seed * 1000003 + epoch all along.)
TEXTBREWER_STREAMS = {"textbrewer", "lmcompress_fp32_textbrewer_order"}
SHARED_ORDERS = {"distill_vs_textbrewer_avx2_fp32_seed3", "distill_vs_textbrewer_avx2_fp32_seed4",
                 "distill_vs_textbrewer_avx2_fp32_seed5"}


def read_draw(name: str, contender: str) -> dict:
    run = json.loads((RESULTS / "raw" / f"{name}.json").read_text())
    seed = re.search(r"--seed (\d+)", run["command"])
    processor = run["processor"]
    return {"file": name, "contender": contender, "seed": int(seed.group(1)) if seed else 42,
            "commit": run.get("commit"), "teacher_test_accuracy": run["teacher_test_accuracy"],
            "processor": f"{processor['model']} ({', '.join(processor['isa']) or 'no AVX2'})",
            "test_accuracy": run["contenders"][contender]["test"]["accuracy"], "shared": name in SHARED_ORDERS}


def welch(a: list[float], b: list[float]) -> dict:
    """mean(b) - mean(a), its 95% interval, Welch's two-sided p-value and the one-sided 95% lower bound."""
    test = stats.ttest_ind(b, a, equal_var=False)
    low, high = test.confidence_interval(0.95)
    lower_bound = stats.ttest_ind(b, a, equal_var=False, alternative="greater").confidence_interval(0.95).low
    return {"difference": statistics.mean(b) - statistics.mean(a), "ci95": [low, high], "p_value": test.pvalue,
            "lower_bound95": lower_bound, "margin": MARGIN, "no_worse_within_margin": bool(lower_bound > -MARGIN)}


def compared(draws: dict[str, list[dict]]) -> dict:
    """Per-group mean and sd, and the Welch comparison, over the given draws."""
    accuracy = {group: [r["test_accuracy"] for r in rows] for group, rows in draws.items()}
    groups = {g: {"n": len(a), "mean": statistics.mean(a), "sd": statistics.stdev(a)} for g, a in accuracy.items()}
    return {"groups": groups, "defaults_minus_textbrewer": welch(accuracy[TEXTBREWER], accuracy[DEFAULTS])}


def streams_check(draws: list[dict]) -> dict:
    """lmcompress_fp32 minus TextBrewer over the same settings: pooling them assumes one distribution (the same
    computation, step for step, in TextBrewer's order), which this tests for a difference between the two tools."""
    accuracy = {"textbrewer": [r["test_accuracy"] for r in draws if r["contender"] in TEXTBREWER_STREAMS],
                "lmcompress_fp32": [r["test_accuracy"] for r in draws if r["contender"] == "lmcompress_fp32"]}
    return {"n": {tool: len(a) for tool, a in accuracy.items()},
            "lmcompress_fp32_minus_textbrewer": welch(accuracy["textbrewer"], accuracy["lmcompress_fp32"])}


def verdict(title: str, comparison: dict) -> list[str]:
    result = comparison["defaults_minus_textbrewer"]
    low, high = result["ci95"]
    lines = [f"## {title}", "", "| settings | draws | mean | sd |", "|---|---:|---:|---:|"]
    lines += [f"| {g} | {s['n']} | {s['mean']:.4f} | {s['sd']:.4f} |" for g, s in comparison["groups"].items()]
    return lines + [
        "", f"Defaults minus TextBrewer's settings: **{100 * result['difference']:+.2f} points** (95% interval "
        f"{100 * low:+.2f} to {100 * high:+.2f}, Welch p = {result['p_value']:.2f}): "
        + ("resolved." if low > 0 or high < 0 else "not resolved; the interval holds zero."),
        "", f"One-sided 95% lower bound: {100 * result['lower_bound95']:+.2f} points, so the defaults are "
        + ("" if result["no_worse_within_margin"] else "**not** shown to be ")
        + f"no worse than TextBrewer's settings within {100 * MARGIN:.1f} points.", ""]


def markdown(draws: dict[str, list[dict]], comparisons: dict[str, dict]) -> str:
    lines = ["# Test accuracy over random streams: lmcompress defaults vs TextBrewer's settings", "",
             "`python benchmarks/distill_seeds_summary.py` over the result files below (demo teacher, test accuracy "
             f"{next(iter(draws.values()))[0]['teacher_test_accuracy']:.4f}; every run fp32, student = teacher "
             "layers 0-1, 5 epochs).", "",
             "| settings | run | file | seed | processor | commit | test accuracy |", "|---|---|---|---:|---|---|---:|"]
    for group, rows in draws.items():
        lines += [f"| {group} | {r['contender']} | {r['file']}{' (shares epoch orders)' if r['shared'] else ''} | "
                  f"{r['seed']} | {r['processor']} | {r['commit']} | {r['test_accuracy']:.4f} |" for r in rows]
    lines += ["", "Draws marked *shares epoch orders* were shuffled from seed + epoch (before commit 6b128f7), so they "
              "share epoch orders with lmcompress_fp32 at seed 1 and with each other; the main test leaves them out.",
              ""]
    return "\n".join(lines + verdict("Independent draws (the main test)", comparisons["independent"])
                     + verdict("Every draw", comparisons["every_draw"])
                     + verdict("Against TextBrewer's own streams only (TextBrewer, and lmcompress replaying its order)",
                               comparisons["textbrewer_itself"]) + streams_lines(comparisons["streams"]))


def streams_lines(check: dict) -> list[str]:
    result = check["lmcompress_fp32_minus_textbrewer"]
    low, high = result["ci95"]
    return ["## Pooling the two tools' draws", "",
            f"Independent draws of TextBrewer's settings, lmcompress_fp32 ({check['n']['lmcompress_fp32']}) minus "
            f"TextBrewer's streams ({check['n']['textbrewer']}): {100 * result['difference']:+.2f} points (95% interval "
            f"{100 * low:+.2f} to {100 * high:+.2f}, Welch p = {result['p_value']:.2f}). The main test pools them "
            "because the computation is the same step for step (lmcompress_fp32_textbrewer_order gives TextBrewer's "
            "0.8244 at seed 42); only the random streams differ."
            + (" The difference is resolved: the two tools' draws are not shown to be one distribution, so read the "
               "main test beside the one against TextBrewer's own streams." if low > 0 or high < 0 else ""), ""]


def main() -> int:
    draws = {group: [read_draw(*draw) for draw in entries] for group, entries in DRAWS.items()}
    teachers = {r["teacher_test_accuracy"] for rows in draws.values() for r in rows}
    if len(teachers) != 1:
        sys.exit(f"the draws were made from different teachers (test accuracy {sorted(teachers)})")
    independent = {g: [r for r in rows if not r["shared"]] for g, rows in draws.items()}
    comparisons = {"independent": compared(independent), "every_draw": compared(draws),
                   "textbrewer_itself": compared({TEXTBREWER: [r for r in independent[TEXTBREWER]
                                                               if r["contender"] in TEXTBREWER_STREAMS],
                                                  DEFAULTS: independent[DEFAULTS]}),
                   "streams": streams_check(independent[TEXTBREWER])}
    (RESULTS / "raw" / "distill_seeds_summary.json").write_text(json.dumps({"draws": draws, **comparisons}, indent=2) + "\n")
    text = markdown(draws, comparisons)
    (RESULTS / "distill_seeds_summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
