#!/usr/bin/env python
"""Per-class KID and brightness spread averaged over several draws of bench/fidelity.py.

Each --runs folder is one `bench/fidelity.py --seed K --out ...` output (its per_class.csv). Prints, as
markdown, each class's KID per draw and its mean for every --models entry, whether that mean is below
the --reference model's, the class-mean KID, and (for runs of bench/fidelity.py that record it) the same
table of each class's spread (sd) of mean brightness with the real images' own:

    python bench/kid_means.py --runs bench/results/base-long/seed0 bench/results/base-long/seed1 \\
        bench/results/base-long/seed2 --models "vlong-s1/baseline @ guidance 2=v baseline, base 5,000 steps" \\
        --reference "first-base/baseline @ guidance 2=first base baseline"

`--reference-runs` reads the reference from other folders of the same draws (e.g. the same seeds
sampled with plain guidance, against runs with guidance shaping).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REAL = "real-random"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="bench/fidelity.py --out folders, one per draw")
    p.add_argument("--models", nargs="+", required=True,
                   help="'<model as in per_class.csv>=<name to print>' (or just the model), compared with --reference")
    p.add_argument("--reference", required=True, help="'<model>=<name>': the model each one has to beat, per class")
    p.add_argument("--reference-runs", nargs="+", default=None,
                   help="read the reference's rows from these folders instead, one per --runs folder with the same "
                        "names (the same draws of another bench/fidelity.py setting, e.g. plain guidance)")
    return p.parse_args(argv)


def _named(spec: str) -> tuple[str, str]:
    model, _, name = spec.partition("=")
    return model, name or model


def main(argv=None):
    args = parse_args(argv)
    models = dict(_named(m) for m in args.models)
    ref, ref_name = _named(args.reference)
    models[ref] = ref_name
    def draw_names(runs) -> list[str]:  # each draw is named by its folder (seed0, ...)
        return [Path(run).name or str(run) for run in runs]

    draws = draw_names(args.runs)
    if len(set(draws)) < len(draws):
        raise SystemExit(f"bench/kid_means.py: --runs folders need distinct names, got {', '.join(draws)}")
    ref_runs = args.reference_runs or args.runs
    if draw_names(ref_runs) != draws:
        raise SystemExit("bench/kid_means.py: --reference-runs must name the same draws as --runs, in order: got "
                         f"{', '.join(map(str, ref_runs))} for {', '.join(draws)}")

    def read(run) -> tuple[pd.DataFrame, Path]:
        path = Path(run) / "per_class.csv"
        if not path.is_file():
            raise SystemExit(f"bench/kid_means.py: {path} is missing: run bench/fidelity.py --out {run} first")
        return pd.read_csv(path), path

    frames, with_brightness = [], []
    for run, ref_run, draw in zip(args.runs, ref_runs, draws):
        frame, path = read(run)
        with_brightness.append("brightness_sd" in frame)
        wanted = (set(models) - ({ref} if args.reference_runs else set())) | {REAL}
        checks = [(frame, path, wanted)]
        if args.reference_runs:
            other, other_path = read(ref_run)
            checks.append((other, other_path, {ref}))
            frame = pd.concat([frame[frame.model != ref], other[other.model == ref]])
        for table_, where, need in checks:
            missing = sorted(need - set(table_.model))
            if missing:  # a mean over fewer draws than asked would pass unnoticed
                raise SystemExit(f"bench/kid_means.py: {where} lacks {', '.join(missing)} (made for other --models); "
                                 f"models there: {', '.join(sorted(table_.model.unique()))}")
        frames.append(frame.assign(draw=draw))
    if len(set(with_brightness)) > 1:
        raise SystemExit("bench/kid_means.py: only some --runs have the brightness_sd column (older bench/fidelity.py "
                         "runs lack it): pass runs of one version")
    runs = pd.concat(frames)

    def table(value: str, fmt: str, cols: dict, versus: bool):
        wide = runs[runs.model.isin(cols)].pivot_table(index="class", columns=["model", "draw"], values=value,
                                                       sort=False)
        means = {m: wide[m].mean(axis=1) for m in cols}
        others = [m for m in cols if m != ref] if versus else []
        head = ", ".join(draws)
        print("| class | " + " | ".join(f"{cols[m]}: draws {head} | mean" for m in cols)
              + "".join(f" | {cols[m]} below {ref_name} (means)" for m in others) + " |")
        print("|---|" + "---|---|" * len(cols) + "---|" * len(others))
        counts = dict.fromkeys(others, 0)
        for c in wide.index:
            cells = []
            for m in cols:
                cells += [", ".join(format(wide.loc[c, (m, d)], fmt) for d in draws), format(means[m][c], fmt)]
            for m in others:
                ok = means[m][c] < means[ref][c]
                counts[m] += ok
                cells.append("yes" if ok else "**no**")
            print(f"| {c} | " + " | ".join(cells) + " |")
        print()
        return means, counts, len(wide.index)

    print("KID per class (evaluator features, against real test images):\n")
    means, counts, n = table("kid", ".3f", models, versus=True)
    for m, k in counts.items():
        print(f"{models[m]}: below {ref_name} in {k} of {n} classes (means over {len(draws)} draws)")
    print(f"class-mean KID, mean over {len(draws)} draws: "
          + ", ".join(f"{models[m]} {means[m].mean():.4f}" for m in models))
    if with_brightness[0]:  # bench/fidelity.py runs from before the column have KID alone
        measured = runs.dropna(subset=["brightness_sd"]).groupby("model").draw.nunique()
        shown = {m: name for m, name in {**models, REAL: "real images"}.items() if measured.get(m, 0) == len(draws)}
        print("\nSpread (sd) of the images' mean brightness per class (real images: each draw's real training "
              "images" + "".join(f"; {name}: not recorded in its runs" for m, name in models.items()
                                 if m not in shown) + "):\n")
        table("brightness_sd", ".4f", shown, versus=False)


if __name__ == "__main__":
    main()
