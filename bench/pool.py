#!/usr/bin/env python
"""What a pool of sampling "pooled" holds: how many of its images a plan at medium difficulty can use.

A pool (`train/generate.py --pool F` writes `<out>-pool`; `train/downstream.py --samplings pooled`
writes `runs/downstream/synthetic/pool-*`) is generated at s ~ U(0, 1) and measured once by the
committee (`committee-*.parquet` in the folder). This prints, overall, per bin of the conditioning
s and per class: the share of images every committee member classifies as their label
("faithful"), the share that are faithful *and* whose committee-mean s lies in the medium band
(what a plan at mu 0.5 wants), and the mean committee s of the faithful images.

    python bench/pool.py runs/probe/nb-pool6-g5-pool
    python bench/pool.py runs/downstream/synthetic/pool-dacd-ebb760fc --out bench/results/pool

Reads only; no model runs. Writes summary.md to --out when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dacd.defaults import MEDIUM_BAND
from dacd.evaluation import markdown_table
from dacd.generation import load_manifest


def pool_table(pool_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    scores = sorted(pool_dir.glob("committee-*.parquet"))
    if not scores:
        raise SystemExit(f"{pool_dir} has no committee-*.parquet: it is not a scored pool (train/generate.py --pool "
                         "scores its pool when the pool is complete)")
    pool = load_manifest(pool_dir).drop(columns=["selection_s"]).merge(pd.read_parquet(scores[-1]), on="id")
    lo, hi = MEDIUM_BAND
    pool["faithful_medium"] = pool.faithful & pool.selection_s.between(lo, hi)
    pool["faithful_s"] = pool.selection_s.where(pool.faithful)
    pool["conditioning bin"] = pd.cut(pool.requested_s, [0, 0.2, 0.4, 0.6, 0.8, 1.0], include_lowest=True).astype(str)

    def summarise(g):
        return g.agg(images=("id", "size"), faithful=("faithful", "mean"),
                     faithful_medium=("faithful_medium", "mean"), faithful_s_mean=("faithful_s", "mean")).round(4)

    overall = summarise(pool.assign(all="all").groupby("all"))
    return overall, summarise(pool.groupby("conditioning bin")), summarise(pool.groupby("class"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pool", type=Path, help="a pool folder (manifest.parquet + committee-*.parquet)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    parts = pool_table(args.pool)
    lo, hi = MEDIUM_BAND
    text = (f"pool {args.pool}: faithful = every committee member ranks the label first; faithful_medium = "
            f"faithful and committee-mean s in [{lo}, {hi}]\n\n"
            + "\n\n".join(markdown_table(t.reset_index()) for t in parts) + "\n")
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
