"""Means over judge seeds 1-3 of bench/controllability.py --calibrated for each training run of
PLAN.md: training seed 0 (the shipped models, from bench/results/controllability-seeds) and
training seeds 1 and 2 (this folder). Run from the repository root:
    python bench/results/controllability-spread/means.py > bench/results/controllability-spread/means.md
"""
from dacd.evaluation import controllability_means

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

print(controllability_means(src))
