"""Per training run, bench/controllability.py --calibrated at judge seeds 1-3: dacd trained with
difficulty balance within each class (this folder, --balance-per-class) next to the v chain's runs with
global balance (bench/results/controllability-spread; training seed 0 is the shipped dacd). Run from the
repository root:
    python bench/results/controllability-classbalance/means.py > bench/results/controllability-classbalance/means.md
"""
from dacd.evaluation import controllability_means

SEEDS = "bench/results/controllability-seeds"
SPREAD = "bench/results/controllability-spread"
HERE = "bench/results/controllability-classbalance"
src = {
    "global balance, training seed 0 (shipped)": {1: "bench/results/controllability-calibrated-v",
                                                  2: f"{SEEDS}/shipped-seed2", 3: f"{SEEDS}/shipped-seed3"},
    "global balance, training seed 1": {k: f"{SPREAD}/v-s1-seed{k}" for k in (1, 2, 3)},
    "global balance, training seed 2": {k: f"{SPREAD}/v-s2-seed{k}" for k in (1, 2, 3)},
    **{f"per-class balance, training seed {t}": {k: f"{HERE}/vc-s{t}-seed{k}" for k in (1, 2, 3)} for t in (0, 1, 2)},
}

print(controllability_means(src, title="calibrated, v base"))
