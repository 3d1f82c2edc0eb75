"""Per-class KID of the shipped v baseline, the first base's and the seed-1 v base's baseline over the
three draws of PLAN.md (bench/fidelity.py --seed 0, 1, 2 at text guidance 2). Run from the repository root:
    python bench/results/fidelity-base-seed/means.py > bench/results/fidelity-base-seed/means.md
"""
import pandas as pd

HERE = "bench/results/fidelity-base-seed"
FIRST = "first-base/baseline @ guidance 2"
MODELS = {"fashion-mnist/baseline @ guidance 2": "v baseline (shipped, base seed 0)",
          "vbase-s1/baseline @ guidance 2": "v baseline on base seed 1",
          FIRST: "first base baseline"}
runs = pd.concat([pd.read_csv(f"{HERE}/seed{k}/per_class.csv").assign(seed=k) for k in (0, 1, 2)])
runs = runs[runs.model.isin(MODELS)]
kid = runs.pivot_table(index="class", columns=["model", "seed"], values="kid", sort=False)
means = {m: kid[m].mean(axis=1) for m in MODELS}
print("| class | " + " | ".join(f"{MODELS[m]}: seeds 0, 1, 2 | mean" for m in MODELS)
      + " | shipped v below first (means) | seed-1 v below first (means) |")
print("|---|" + "---|---|" * len(MODELS) + "---|---|")
counts = {m: 0 for m in MODELS if m != FIRST}
for c in kid.index:
    cells = []
    for m in MODELS:
        cells += [", ".join(f"{kid.loc[c, (m, k)]:.3f}" for k in (0, 1, 2)), f"{means[m][c]:.3f}"]
    flags = []
    for m in counts:
        ok = means[m][c] < means[FIRST][c]
        counts[m] += ok
        flags.append("yes" if ok else "**no**")
    print(f"| {c} | " + " | ".join(cells + flags) + " |")
print()
for m, n in counts.items():
    print(f"{MODELS[m]}: below the first base's in {n} of {len(kid.index)} classes (three-draw means)")
print("class-mean KID, three-draw mean: "
      + ", ".join(f"{MODELS[m]} {means[m].mean():.4f}" for m in MODELS))
