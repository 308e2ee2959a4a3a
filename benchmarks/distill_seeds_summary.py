"""Test accuracy over random streams: lmcompress's defaults against TextBrewer's settings.

Each run of `distill_vs_textbrewer.py` is one draw of the random streams (batch order, dropout masks), which move
this 2-layer student by more than a point. This collects the runs named in DRAWS (all on the same demo teacher, all
fp32) and says whether the difference of the two means is resolved: Welch's t-test and its 95% interval. "Equal
accuracy" can only be shown within a margin: the defaults count as no worse when the one-sided 95% lower bound of
the difference is above -MARGIN (0.5 points, the accuracy loss the issue allows the teacher's fastest backend).

    python benchmarks/distill_seeds_summary.py

Writes benchmarks/results/distill_seeds_summary.{json,md}.
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
# lmcompress_fp32 is TextBrewer's computation in lmcompress's loop (the same step for step in TextBrewer's batch
# order: lmcompress_fp32_textbrewer_order), drawing lmcompress's own streams.
DRAWS = {
    TEXTBREWER: [("distill_vs_textbrewer_epyc_seed42", "textbrewer"),
                 ("distill_vs_textbrewer_seed1", "textbrewer"),
                 ("distill_vs_textbrewer_seed2", "textbrewer"),
                 ("distill_vs_textbrewer_avx2_fp32_seed42", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed1", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed3", "lmcompress_fp32"),
                 ("distill_vs_textbrewer_avx2_fp32_seed4", "lmcompress_fp32")],
    DEFAULTS: [("distill_vs_textbrewer_avx2_defaults_seed42_forked_eval", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed1", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed2", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed3", "lmcompress_defaults"),
               ("distill_vs_textbrewer_avx2_defaults_seed4", "lmcompress_defaults")],
}


def read_draw(name: str, contender: str) -> dict:
    run = json.loads((RESULTS / f"{name}.json").read_text())
    seed = re.search(r"--seed (\d+)", run["command"])
    processor = run["processor"]
    return {"file": name, "contender": contender, "seed": int(seed.group(1)) if seed else 42,
            "commit": run.get("commit"), "teacher_test_accuracy": run["teacher_test_accuracy"],
            "processor": f"{processor['model']} ({', '.join(processor['isa']) or 'no AVX2'})",
            "test_accuracy": run["contenders"][contender]["test"]["accuracy"]}


def welch(a: list[float], b: list[float]) -> dict:
    """mean(b) - mean(a), its 95% interval, Welch's two-sided p-value and the one-sided 95% lower bound."""
    test = stats.ttest_ind(b, a, equal_var=False)
    low, high = test.confidence_interval(0.95)
    lower_bound = stats.ttest_ind(b, a, equal_var=False, alternative="greater").confidence_interval(0.95).low
    return {"difference": statistics.mean(b) - statistics.mean(a), "ci95": [low, high], "p_value": test.pvalue,
            "lower_bound95": lower_bound, "margin": MARGIN, "no_worse_within_margin": bool(lower_bound > -MARGIN)}


def markdown(draws: dict[str, list[dict]], groups: dict[str, dict], result: dict) -> str:
    lines = ["# Test accuracy over random streams: lmcompress defaults vs TextBrewer's settings", "",
             "`python benchmarks/distill_seeds_summary.py` over the result files below (demo teacher, test accuracy "
             f"{next(iter(draws.values()))[0]['teacher_test_accuracy']:.4f}; every run fp32, student = teacher "
             "layers 0-1, 5 epochs).", "",
             "| settings | run | file | seed | processor | commit | test accuracy |", "|---|---|---|---:|---|---|---:|"]
    for group, rows in draws.items():
        lines += [f"| {group} | {r['contender']} | {r['file']} | {r['seed']} | {r['processor']} | {r['commit']} | "
                  f"{r['test_accuracy']:.4f} |" for r in rows]
    lines += ["", "| settings | draws | mean | sd |", "|---|---:|---:|---:|"]
    lines += [f"| {g} | {s['n']} | {s['mean']:.4f} | {s['sd']:.4f} |" for g, s in groups.items()]
    low, high = result["ci95"]
    lines += ["", f"Defaults minus TextBrewer's settings: **{100 * result['difference']:+.2f} points** (95% interval "
              f"{100 * low:+.2f} to {100 * high:+.2f}, Welch p = {result['p_value']:.2f}): "
              + ("resolved." if low > 0 or high < 0 else "not resolved; the interval holds zero."),
              "", f"One-sided 95% lower bound: {100 * result['lower_bound95']:+.2f} points, so the defaults are "
              + ("" if result["no_worse_within_margin"] else "**not** shown to be ")
              + f"no worse than TextBrewer's settings within {100 * MARGIN:.1f} points.", ""]
    return "\n".join(lines)


def main() -> int:
    draws = {group: [read_draw(*draw) for draw in entries] for group, entries in DRAWS.items()}
    teachers = {r["teacher_test_accuracy"] for rows in draws.values() for r in rows}
    if len(teachers) != 1:
        sys.exit(f"the draws were made from different teachers (test accuracy {sorted(teachers)})")
    accuracy = {group: [r["test_accuracy"] for r in rows] for group, rows in draws.items()}
    groups = {g: {"n": len(a), "mean": statistics.mean(a), "sd": statistics.stdev(a)} for g, a in accuracy.items()}
    result = welch(accuracy[TEXTBREWER], accuracy[DEFAULTS])
    (RESULTS / "distill_seeds_summary.json").write_text(
        json.dumps({"draws": draws, "groups": groups, "defaults_minus_textbrewer": result}, indent=2) + "\n")
    text = markdown(draws, groups, result)
    (RESULTS / "distill_seeds_summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
