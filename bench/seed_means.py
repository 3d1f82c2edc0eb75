#!/usr/bin/env python
"""Means over judge seeds of `bench/controllability.py --calibrated` runs, one table row per model
(or curve), one summary line per arm: the reader the dial experiments in bench/results share.

    from seed_means import report      # a results folder's means.py, run from the repository root
    report({"shipped": {1: "bench/results/controllability-calibrated-v", 2: ..., 3: ...}, ...})

Rows are named "<arm>, <detail>"; runs of one arm (the part before the first comma) are averaged in
the summary lines. A folder without summary.json is left out of its row (the row says which seeds).
"""
from __future__ import annotations

import json
from pathlib import Path


def mean(x):
    return sum(x) / len(x)


def report(src: dict[str, dict[int, str]], title: str = "calibrated") -> None:
    """Print the table and the arm lines for `src`: row name -> {judge seed: results folder}."""
    print(f"| {title} | Spearman (cell means), judge seeds 1, 2, 3 | mean | MAE, mean "
          "| medium-band share, mean | accuracy at s <= 0.2, mean | lowest class Spearman, mean |")
    print("|---|---|---|---|---|---|---|")
    arms, arms_seed1 = {}, {}
    for name, folders in src.items():
        runs = [json.load(open(f + "/summary.json")) for k, f in sorted(folders.items())
                if Path(f, "summary.json").is_file()]
        if not runs:
            print(f"| {name} | not run | | | | | |")
            continue
        sp = [r["dacd"]["spearman_overall"] for r in runs]
        per_class = {c: mean([r["dacd"]["spearman_per_class"][c] for r in runs])
                     for c in runs[0]["dacd"]["spearman_per_class"]}
        low = min(per_class, key=per_class.get)
        arm = name.split(",")[0]
        arms.setdefault(arm, []).append(mean(sp))
        arms_seed1.setdefault(arm, []).append(sp[0])
        seeds = "" if len(runs) == 3 else " (judge seed 1 only)" if len(runs) == 1 else f" (judge seeds 1-{len(runs)} only)"
        print(f"| {name}{seeds} | {', '.join(f'{x:.3f}' for x in sp)} | {mean(sp):.3f} "
              f"| {mean([r['dacd']['mae'] for r in runs]):.3f} "
              f"| {100 * mean([r['medium_band_share']['dacd'] for r in runs]):.1f}% "
              f"| {100 * mean([r['accuracy_at_s_le_0.2'] for r in runs]):.1f}% | {low} {per_class[low]:.2f} |")
    print()
    for arm, means in arms.items():
        s1 = arms_seed1[arm]
        print(f"{arm}: mean Spearman over its {len(means)} training runs {mean(means):.3f} (range "
              f"{min(means):.3f}-{max(means):.3f}); at judge seed 1 alone {mean(s1):.3f} ({min(s1):.3f}-{max(s1):.3f})")
