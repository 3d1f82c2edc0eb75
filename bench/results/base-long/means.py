"""Per-class KID and spread of mean brightness of the seed-1 v base's baseline after 5,000 and 2,500
U-Net steps and the first base's baseline over the three draws of PLAN.md (bench/fidelity.py --seed 0, 1, 2 at text
guidance 2). Run from the repository root:
    python bench/results/base-long/means.py > bench/results/base-long/means.md
"""
import pandas as pd

HERE = "bench/results/base-long"
FIRST = "first-base/baseline @ guidance 2"
REAL = "real-random"
MODELS = {"vlong-s1/baseline @ guidance 2": "v baseline, base 5,000 steps",
          "vbase-s1/baseline @ guidance 2": "v baseline, base 2,500 steps",
          FIRST: "first base baseline"}
SEEDS = (0, 1, 2)
runs = pd.concat([pd.read_csv(f"{HERE}/seed{k}/per_class.csv").assign(seed=k) for k in SEEDS])


def table(value: str, fmt: str, with_real: bool):
    cols = {**MODELS, **({REAL: "real images"} if with_real else {})}
    wide = runs[runs.model.isin(cols)].pivot_table(index="class", columns=["model", "seed"], values=value, sort=False)
    means = {m: wide[m].mean(axis=1) for m in cols}
    print("| class | " + " | ".join(f"{cols[m]}: seeds 0, 1, 2 | mean" for m in cols)
          + (" | 5,000 steps below first (means) | 2,500 steps below first (means) |" if not with_real else " |"))
    print("|---|" + "---|---|" * len(cols) + ("---|---|" if not with_real else ""))
    counts = {m: 0 for m in MODELS if m != FIRST}
    for c in wide.index:
        cells = []
        for m in cols:
            cells += [", ".join(format(wide.loc[c, (m, k)], fmt) for k in SEEDS), format(means[m][c], fmt)]
        if not with_real:
            for m in counts:
                ok = means[m][c] < means[FIRST][c]
                counts[m] += ok
                cells.append("yes" if ok else "**no**")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print()
    return means, counts, wide.index


print("KID per class (evaluator features, against real test images):\n")
means, counts, classes = table("kid", ".3f", with_real=False)
for m, n in counts.items():
    print(f"{MODELS[m]}: below the first base's in {n} of {len(classes)} classes (three-draw means)")
print("class-mean KID, three-draw mean: " + ", ".join(f"{MODELS[m]} {means[m].mean():.4f}" for m in MODELS))
print("\nSpread (sd) of the images' mean brightness per class (real images: the draw's real training images):\n")
table("brightness_sd", ".4f", with_real=True)
