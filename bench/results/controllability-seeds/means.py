"""Means over judge seeds 1-3 of bench/controllability.py --calibrated for the three models of
PLAN.md (seed 1 of the shipped and EMA models are their earlier folders). Run from the repository root:
    python bench/results/controllability-seeds/means.py > bench/results/controllability-seeds/means.md
"""
import json

src = {"first": {1: "bench/results/controllability-seeds/first-seed1"},
       "shipped": {1: "bench/results/controllability-calibrated-v"},
       "ema": {1: "bench/results/controllability-calibrated-v-ema"}}
for m in src:
    for k in (2, 3):
        src[m][k] = f"bench/results/controllability-seeds/{m}-seed{k}"
names = {"first": "first base dacd (commit 74f51d0)", "shipped": "shipped v dacd",
         "ema": "EMA dacd (runs/exp/dacd-v-ema)"}


def mean(x):
    return sum(x) / len(x)


print("| calibrated; judge seeds 1, 2, 3 | Spearman (cell means) | mean | MAE, mean "
      "| medium-band share, mean | accuracy at s <= 0.2, mean |")
print("|---|---|---|---|---|---|")
for m in src:
    runs = [json.load(open(src[m][k] + "/summary.json")) for k in (1, 2, 3)]
    sp = [r["dacd"]["spearman_overall"] for r in runs]
    mae = [r["dacd"]["mae"] for r in runs]
    med = [r["medium_band_share"]["dacd"] for r in runs]
    acc = [r["accuracy_at_s_le_0.2"] for r in runs]
    print(f"| {names[m]} | {', '.join(f'{x:.3f}' for x in sp)} | {mean(sp):.3f} | {mean(mae):.3f} "
          f"| {100 * mean(med):.1f}% | {100 * mean(acc):.1f}% |")
