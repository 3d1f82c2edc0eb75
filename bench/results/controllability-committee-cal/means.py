"""PLAN.md's comparison: each model's calibrated dial over judge seeds 1-3 with the curve fitted to the
scoring classifier alone (earlier folders) and to the committee's mean s (this folder). Run from the
repository root:
    python bench/results/controllability-committee-cal/means.py > bench/results/controllability-committee-cal/means.md
"""
from dacd.evaluation import controllability_means

SEEDS = "bench/results/controllability-seeds"
SPREAD = "bench/results/controllability-spread"
HERE = "bench/results/controllability-committee-cal"
src = {
    "first base scorer curve, training seed 0 (shipped then; the target's reference)": {k: f"{SEEDS}/first-seed{k}" for k in (1, 2, 3)},
    "first base committee curve, training seed 0": {k: f"{HERE}/first-seed{k}" for k in (1, 2, 3)},
    "v scorer curve, training seed 0 (shipped)": {1: "bench/results/controllability-calibrated-v",
                                                  2: f"{SEEDS}/shipped-seed2", 3: f"{SEEDS}/shipped-seed3"},
    "v scorer curve, training seed 1": {k: f"{SPREAD}/v-s1-seed{k}" for k in (1, 2, 3)},
    "v scorer curve, training seed 2": {k: f"{SPREAD}/v-s2-seed{k}" for k in (1, 2, 3)},
    "v committee curve, training seed 0 (shipped model)": {k: f"{HERE}/v-seed{k}" for k in (1, 2, 3)},
    "v committee curve, training seed 1": {k: f"{HERE}/v-s1-seed{k}" for k in (1, 2, 3)},
    "v committee curve, training seed 2": {k: f"{HERE}/v-s2-seed{k}" for k in (1, 2, 3)},
}

print(controllability_means(src))
