#!/usr/bin/env python
"""The paired difference between two cells of a downstream table (train/downstream.py's runs.csv),
over the seeds both ran: e.g. whether dacd at mu 0.5 is at least as good as at mu 0.9.

    python bench/paired.py bench/results/downstream-mupool12-d3-mu0.9/runs.csv \\
        "dacd mu-pooled g1d3 mu=0.5 r=0.25" "dacd mu-pooled g1d3 mu=0.9 r=0.25"

Prints cell A minus cell B in points with its 95% t-interval and two-sided paired-t p-value
(dacd.evaluation.paired_comparison, the downstream table's own statistics, with B as the
reference). Several runs.csv files may be given (comma-separated) when the cells sit in different
tables; a (cell, seed) found in two of them must agree. Reads only.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from dacd.evaluation import paired_comparison


def load_runs(paths: list[str]) -> pd.DataFrame:
    runs = pd.concat([pd.read_csv(p)[["cell", "seed", "accuracy"]] for p in paths], ignore_index=True)
    clash = runs.groupby(["cell", "seed"]).accuracy.nunique()
    if (clash > 1).any():
        cell, seed = clash[clash > 1].index[0]
        raise SystemExit(f"error: {cell!r} seed {seed} has different accuracies in {paths}: not the same cell")
    return runs.drop_duplicates(["cell", "seed"])


def compare(runs: pd.DataFrame, a: str, b: str) -> dict:
    for cell in (a, b):
        if cell not in set(runs.cell):
            raise SystemExit(f"error: no cell {cell!r}; cells: {sorted(set(runs.cell))}")
    row = paired_comparison(runs[runs.cell.isin([a, b])], reference=b).set_index("cell").loc[a]
    if row.paired_seeds < 2:
        raise SystemExit(f"error: {a!r} and {b!r} share {row.paired_seeds} seed(s): a paired interval needs 2")
    return {"a": a, "b": b, "paired_seeds": int(row.paired_seeds), "diff": 100 * row.diff_mean,
            "low": 100 * row.diff_ci_low, "high": 100 * row.diff_ci_high, "p": float(row.p_value)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="runs.csv of train/downstream.py (several: comma-separated)")
    p.add_argument("a", help="cell A (as in the table's cell column)")
    p.add_argument("b", help="cell B, the reference")
    args = p.parse_args(argv)
    r = compare(load_runs(args.runs.split(",")), args.a, args.b)
    print(f"{r['a']} minus {r['b']} ({r['paired_seeds']} paired seeds): {r['diff']:+.2f} points "
          f"[{r['low']:+.2f}, {r['high']:+.2f}], paired-t p {r['p']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
