"""Issue #12's selection probe (unguided 12x pool at the plan, three-member committee, 500 rows at
N(0.5, 0.1)) for each v-chain training run of PLAN.md: the pooled row of bench/feedback.py's summary.csv
(the shipped dacd's from bench/results/mupool-v/probe50-d1-c3). Run from the repository root:
    python bench/results/controllability-classbalance/probe.py > bench/results/controllability-classbalance/probe.md
"""
from pathlib import Path

import pandas as pd

HERE = "bench/results/controllability-classbalance"
src = {"global balance, training seed 0 (shipped)": ("bench/results/mupool-v/probe50-d1-c3", "v-umupool12-50-c3"),
       "global balance, training seed 1": (f"{HERE}/probe-v-s1", "v-s1-umupool12-50-c3"),
       "global balance, training seed 2": (f"{HERE}/probe-v-s2", "v-s2-umupool12-50-c3"),
       **{f"per-class balance, training seed {k}": (f"{HERE}/probe-vc-s{k}", f"vc-s{k}-umupool12-50-c3")
          for k in (0, 1, 2)},
       "flat balance (power 1), training seed 0": (f"{HERE}/probe-vf-s0", "vf-s0-umupool12-50-c3")}
print("| 12x unguided pool at the plan, 500-row probe | medium-band share | x real ceiling | evaluator accuracy |")
print("|---|---|---|---|")
arms = {}
for name, (folder, probe) in src.items():
    path = Path(folder, "summary.csv")
    if not path.is_file():
        print(f"| {name} | not run | | |")
        continue
    table = pd.read_csv(path)
    row = table[table.source.str.startswith(f"pooled: {probe} ")].iloc[0]
    ceiling = table[table.source.str.startswith("real ceiling")].iloc[0].medium_share
    arms.setdefault(name.split(",")[0], []).append((row.medium_over_ceiling, row.evaluator_accuracy))
    print(f"| {name} | {row.medium_share:.3f} | {row.medium_over_ceiling:.3f} (ceiling {ceiling:.3f}) "
          f"| {100 * row.evaluator_accuracy:.1f}% |")
print()
for arm, rows in arms.items():
    x, acc = zip(*rows)
    print(f"{arm}: mean over {len(rows)} training runs {sum(x) / len(x):.3f}x the ceiling (range {min(x):.3f}-"
          f"{max(x):.3f}), evaluator accuracy {100 * sum(acc) / len(acc):.1f}%")
