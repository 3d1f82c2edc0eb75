#!/usr/bin/env python
"""The paired difference between two cells of a downstream table (train/downstream.py's runs.csv),
over the seeds both ran: e.g. whether dacd at mu 0.5 is at least as good as at mu 0.9.

    python bench/paired.py bench/results/downstream-mupool12-d3-mu0.9/runs.csv \\
        "dacd mu-pooled g1d3 mu=0.5 r=0.25" "dacd mu-pooled g1d3 mu=0.9 r=0.25"

Prints cell A minus cell B in points with its 95% t-interval and two-sided paired-t p-value
(dacd.evaluation.paired_comparison, the downstream table's own statistics, with B as the
reference). Several runs.csv files may be given (comma-separated) when the cells sit in different
tables; a (cell, seed) found in two of them must agree. Reads only.

    python bench/paired.py bench/results/downstream-anchmupool12-s0.8/runs.csv,bench/results/downstream/runs.csv \
        "dacd anchored-mu-pooled g1d3 mu=0.5 r=0.25" real-only --confusion 8

--confusion K also prints the K largest changes of the test confusion matrix, A minus B, in
points of each true class's test images (from the confusion.json beside each runs.csv: the
mean matrix over a cell's seeds, so the change is paired when both ran the same seeds): which
mistakes an added set makes more often, and which less.

Two tables may hold cells of one name made from different sets (their settings differ in something
the name does not show, such as the pool factor); name such a cell by its table, `RUNS.CSV::CELL`:

    python bench/paired.py bench/results/downstream-v-unguided-c3-pool48/runs.csv,bench/results/downstream-v-unguided-c3/runs.csv \
        "bench/results/downstream-v-unguided-c3-pool48/runs.csv::dacd mu-pooled-c3 g1d1 mu=0.5 r=0.25" \
        "bench/results/downstream-v-unguided-c3/runs.csv::dacd mu-pooled-c3 g1d1 mu=0.5 r=0.25"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dacd.evaluation import paired_comparison


def load_runs(paths: list[str]) -> pd.DataFrame:
    runs = pd.concat([pd.read_csv(p)[["cell", "seed", "accuracy"]] for p in paths], ignore_index=True)
    clash = runs.groupby(["cell", "seed"]).accuracy.nunique()
    if (clash > 1).any():
        cell, seed = clash[clash > 1].index[0]
        raise SystemExit(f"error: {cell!r} seed {seed} has different accuracies in {paths}: not the same cell")
    return runs.drop_duplicates(["cell", "seed"])


def cells_named(paths: list[str], cells: list[str]) -> pd.DataFrame:
    """The runs of the tables in `paths`; a cell written `RUNS.CSV::CELL` is read from that table
    alone and keeps that whole string as its name: two tables may hold cells of one name made from
    different sets (e.g. pools of two sizes), which `load_runs` would refuse to merge."""
    if not any("::" in c for c in cells):
        return load_runs(paths)
    frames = []
    for spec in cells:
        path, cell = spec.split("::", 1) if "::" in spec else (None, spec)
        runs = load_runs([path] if path else paths)
        if cell not in set(runs.cell):
            raise SystemExit(f"error: no cell {cell!r} in {path or paths}; cells: {sorted(set(runs.cell))}")
        frames.append(runs[runs.cell == cell].assign(cell=spec))
    return pd.concat(frames, ignore_index=True)


def compare(runs: pd.DataFrame, a: str, b: str) -> dict:
    for cell in (a, b):
        if cell not in set(runs.cell):
            raise SystemExit(f"error: no cell {cell!r}; cells: {sorted(set(runs.cell))}")
    row = paired_comparison(runs[runs.cell.isin([a, b])], reference=b).set_index("cell").loc[a]
    if row.paired_seeds < 2:
        raise SystemExit(f"error: {a!r} and {b!r} share {row.paired_seeds} seed(s): a paired interval needs 2")
    return {"a": a, "b": b, "paired_seeds": int(row.paired_seeds), "diff": 100 * row.diff_mean,
            "low": 100 * row.diff_ci_low, "high": 100 * row.diff_ci_high, "p": float(row.p_value)}


def load_confusions(paths: list[str]) -> tuple[list[str], dict[str, np.ndarray], dict[str, set]]:
    """Each cell's mean test confusion matrix (rows true, columns predicted) from the confusion.json
    files beside `paths`, and the seeds it is the mean over (that table's runs.csv); the first file
    that has a cell gives it."""
    names, mats, seeds = None, {}, {}
    for path in paths:
        f = Path(path).parent / "confusion.json"
        if not f.is_file():
            raise SystemExit(f"error: no confusion.json beside {path} (train/downstream.py writes it with runs.csv)")
        d = json.loads(f.read_text())
        if names is not None and d["class_names"] != names:
            raise SystemExit(f"error: {f} has other classes than {paths[0]}'s table")
        names = d["class_names"]
        runs = pd.read_csv(path)
        for cell, m in d["rows_true_columns_predicted"].items():
            if cell not in mats:
                mats[cell], seeds[cell] = np.asarray(m, float), set(runs.seed[runs.cell == cell])
    return names, mats, seeds


def confusion_changes(names, mats, a: str, b: str, k: int) -> pd.DataFrame:
    """The k largest changes (by size) of A's confusion matrix from B's, in points of each true class."""
    for cell in (a, b):
        if cell not in mats:
            raise SystemExit(f"error: no confusion matrix for {cell!r}")
    diff = 100 * (mats[a] - mats[b]) / mats[b].sum(1, keepdims=True)
    t, q = np.unravel_index(np.argsort(-np.abs(diff), axis=None, kind="stable")[:k], diff.shape)
    return pd.DataFrame({"true": [names[i] for i in t], "predicted": [names[j] for j in q],
                         "points": diff[t, q].round(2), "kind": np.where(t == q, "correct", "mistake")})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="runs.csv of train/downstream.py (several: comma-separated)")
    p.add_argument("a", help="cell A (as in the table's cell column)")
    p.add_argument("b", help="cell B, the reference")
    p.add_argument("--confusion", type=int, default=0, metavar="K",
                   help="also print the K largest changes of the test confusion matrix, A minus B")
    args = p.parse_args(argv)
    paths = args.runs.split(",")
    runs = cells_named(paths, [args.a, args.b])
    if args.confusion > 0 and any("::" in c for c in (args.a, args.b)):
        raise SystemExit("error: --confusion reads cells by name; it does not take RUNS.CSV::CELL")
    r = compare(runs, args.a, args.b)
    print(f"{r['a']} minus {r['b']} ({r['paired_seeds']} paired seeds): {r['diff']:+.2f} points "
          f"[{r['low']:+.2f}, {r['high']:+.2f}], paired-t p {r['p']:.3g}")
    if args.confusion > 0:
        names, mats, seeds = load_confusions(paths)
        table = confusion_changes(names, mats, args.a, args.b, args.confusion)
        note = "" if seeds[args.a] == seeds[args.b] else " (the matrices are means over different seeds: not paired)"
        print(f"largest changes of the test confusion matrix, points of the true class's images{note}:")
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
