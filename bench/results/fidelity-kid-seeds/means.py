"""Per-class KID of the two baselines over the three draws of PLAN.md (bench/fidelity.py --seed 0, 1, 2
at text guidance 2). Run from the repository root:
    python bench/results/fidelity-kid-seeds/means.py > bench/results/fidelity-kid-seeds/means.md
"""
import pandas as pd

HERE = "bench/results/fidelity-kid-seeds"
MODELS = {"fashion-mnist/baseline @ guidance 2": "v baseline (shipped)",
          "first-base/baseline @ guidance 2": "first base baseline"}
runs = pd.concat([pd.read_csv(f"{HERE}/seed{k}/per_class.csv").assign(seed=k) for k in (0, 1, 2)])
runs = runs[runs.model.isin(MODELS)]
kid = runs.pivot_table(index="class", columns=["model", "seed"], values="kid", sort=False)
print("| class | " + " | ".join(f"{MODELS[m]}: seeds 0, 1, 2 | mean" for m in MODELS) + " | v below first base (means) |")
print("|---|" + "---|---|" * len(MODELS) + "---|")
below = []
for c in kid.index:
    cells, means = [], []
    for m in MODELS:
        v = [kid.loc[c, (m, k)] for k in (0, 1, 2)]
        means.append(sum(v) / 3)
        cells += [", ".join(f"{x:.3f}" for x in v), f"{means[-1]:.3f}"]
    below.append(means[0] < means[1])
    print(f"| {c} | " + " | ".join(cells) + f" | {'yes' if below[-1] else '**no**'} |")
print()
print(f"v baseline below the first base's in {sum(below)} of {len(below)} classes (three-draw means)")
