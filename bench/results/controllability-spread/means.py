"""Means over judge seeds 1-3 of bench/controllability.py --calibrated for each training run of
PLAN.md: training seed 0 (the shipped models, from bench/results/controllability-seeds) and
training seeds 1 and 2 (this folder). Run from the repository root:
    python bench/results/controllability-spread/means.py > bench/results/controllability-spread/means.md
"""
import json
from pathlib import Path

SEEDS = "bench/results/controllability-seeds"
HERE = "bench/results/controllability-spread"
src = {
    "first base, training seed 0 (commit 74f51d0)": {1: f"{SEEDS}/first-seed1", 2: f"{SEEDS}/first-seed2",
                                                     3: f"{SEEDS}/first-seed3"},
    "first base, training seed 1": {k: f"{HERE}/first-s1-seed{k}" for k in (1, 2, 3)},
    "first base, training seed 2": {k: f"{HERE}/first-s2-seed{k}" for k in (1, 2, 3)},
    "v chain, training seed 0 (shipped)": {1: "bench/results/controllability-calibrated-v",
                                           2: f"{SEEDS}/shipped-seed2", 3: f"{SEEDS}/shipped-seed3"},
    "v chain, training seed 1": {k: f"{HERE}/v-s1-seed{k}" for k in (1, 2, 3)},
    "v chain, training seed 2": {k: f"{HERE}/v-s2-seed{k}" for k in (1, 2, 3)},
}


def mean(x):
    return sum(x) / len(x)


print("| calibrated; judge seeds 1, 2, 3 | Spearman (cell means) | mean | MAE, mean "
      "| medium-band share, mean | accuracy at s <= 0.2, mean |")
print("|---|---|---|---|---|---|")
chain_means = {}
for name, folders in src.items():
    runs = [json.load(open(f + "/summary.json")) for k, f in sorted(folders.items())
            if Path(f, "summary.json").is_file()]
    if not runs:
        print(f"| {name} | not run | | | | |")
        continue
    sp = [r["dacd"]["spearman_overall"] for r in runs]
    mae = [r["dacd"]["mae"] for r in runs]
    med = [r["medium_band_share"]["dacd"] for r in runs]
    acc = [r["accuracy_at_s_le_0.2"] for r in runs]
    chain_means.setdefault(name.split(",")[0], []).append(mean(sp))
    seeds = "" if len(runs) == 3 else f" (judge seeds 1-{len(runs)} only)"
    print(f"| {name}{seeds} | {', '.join(f'{x:.3f}' for x in sp)} | {mean(sp):.3f} | {mean(mae):.3f} "
          f"| {100 * mean(med):.1f}% | {100 * mean(acc):.1f}% |")
print()
for chain, means in chain_means.items():
    print(f"{chain}: mean Spearman over its {len(means)} training runs {mean(means):.3f} "
          f"(range {min(means):.3f}-{max(means):.3f})")
