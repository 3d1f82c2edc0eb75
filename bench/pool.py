#!/usr/bin/env python
"""What a pool of sampling "pooled" holds: how many of its images a plan at medium difficulty can use.

A pool (`train/generate.py --pool F` writes `<out>-pool`; `train/downstream.py --samplings pooled`
writes `runs/downstream/synthetic/pool-*`) is generated at s ~ U(0, 1) (or at its plan's difficulty,
`--pool-difficulty plan`) and measured once by the
committee (`committee-*.parquet` in the folder). This prints, overall, per bin of the conditioning
s and per class: the share of images every committee member classifies as their label
("faithful"), the share that are faithful *and* whose committee-mean s lies in the medium band
(what a plan at mu 0.5 wants), the mean committee s of the faithful images, and the share of the
faithful medium images whose evaluator-measured s (the judge's, in the pool's manifest) is in the
medium band too: the medium-band share a set made only of them would have.

    python bench/pool.py runs/probe/nb-pool6-g5-pool
    python bench/pool.py runs/downstream/synthetic/pool-dacd-ebb760fc --out bench/results/pool
    python bench/pool.py <pool> --mus 0.5 0.3 0.7 0.9 --per-class 150   # what each mu's plan would take
    python bench/pool.py <pool> --rules A,B A,B,C --per-class 20 --ceiling 0.465   # label rules, judged

With --mus, it also matches a plan per mu (`--per-class` rows per class of the classes the pool
holds, at s ~ N(mu, --sigma), plan seed --seed: `train/downstream.py --gen-seed`, 0 by default;
pooling at --tolerance, label rule on) to the pool and
prints, per mu, the matched set's accepted and faithful shares, its mean committee s, and how many
of its images the first mu's set also holds: whether the difficulty plan still changes the set.

With --rules (committees, each a comma-separated list of member folders whose scores the pool
holds; the one with more members counts as the stricter), it matches one plan (the first --mus, or 0.5) under each committee's label
rule, and under a tiered rule that tries the committees from the strictest down (a row takes the
strictest committee's faithful image within --tolerance of its request, else the next one's, else
the strictest's nearest faithful image: the rule of `--looser-committee` in train/generate.py and
train/downstream.py), and prints what the evaluator (the judge, whose measured
`s` and prediction every pool image carries) says of each matched set: medium-band share (and its
ratio to --ceiling, the real ceiling of the same plan), label accuracy, mean measured `s`. It is a
frontier: which trade between medium share and label accuracy the pool allows.

Reads only; no model runs. Writes summary.md to --out when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dacd.defaults import MEDIUM_BAND, default_committee
from dacd.evaluation import emit_report, markdown_table
from dacd.generation import (POOL_SCORES, DifficultySpec, GenerationError, Pooling, committee_key, load_manifest,
                             make_plan, match_pool)


def scored_pool(pool_dir: Path, committee=None) -> pd.DataFrame:
    """The pool's manifest with a committee's `selection_s` and `faithful`: the cache of `committee`
    (member folders) when given; else the pool's only cache, or the shipped committee's when a pool
    was scored by several."""
    scores = sorted(pool_dir.glob(POOL_SCORES.format(key="*")))
    if not scores:
        raise SystemExit(f"{pool_dir} has no committee-*.parquet: it is not a scored pool (train/generate.py --pool "
                         "scores its pool when the pool is complete)")
    if committee or len(scores) > 1:
        folders = committee or default_committee()
        path = pool_dir / POOL_SCORES.format(key=committee_key(folders))
        if not path.is_file():
            raise SystemExit(f"{pool_dir} holds no scores of the committee {[str(f) for f in folders]} (it holds "
                             f"{[f.name for f in scores]}): pass --committee with the folders that scored it, or "
                             "match a set with that committee first (train/generate.py --pool-dir ... --committee)")
        scores = [path]
    return load_manifest(pool_dir).drop(columns=["selection_s"]).merge(pd.read_parquet(scores[-1]), on="id")


def pool_table(pool_dir: Path, committee=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    pool = scored_pool(pool_dir, committee)
    lo, hi = MEDIUM_BAND
    pool["faithful_medium"] = pool.faithful & pool.selection_s.between(lo, hi)
    pool["faithful_s"] = pool.selection_s.where(pool.faithful)
    # what the judge says of the faithful medium images: the medium share a set made of them would have
    pool["judged_medium"] = pool.measured_s.between(lo, hi).where(pool.faithful_medium & pool.measured_s.notna())
    pool["conditioning bin"] = pd.cut(pool.requested_s, [0, 0.2, 0.4, 0.6, 0.8, 1.0], include_lowest=True).astype(str)

    def summarise(g):
        return g.agg(images=("id", "size"), faithful=("faithful", "mean"),
                     faithful_medium=("faithful_medium", "mean"), faithful_s_mean=("faithful_s", "mean"),
                     faithful_medium_judged_medium=("judged_medium", "mean")).round(4)

    overall = summarise(pool.assign(all="all").groupby("all"))
    return overall, summarise(pool.groupby("conditioning bin")), summarise(pool.groupby("class"))


def plan_overlap(pool_dir: Path, mus, per_class: int, sigma: float, tolerance: float, seed: int = 0,
                 committee=None) -> pd.DataFrame:
    """Per mu, the set `match_pool` gives a plan at N(mu, sigma): acceptance, faithfulness, mean
    committee s, and the images it shares with the first mu's set."""
    pool = scored_pool(pool_dir, committee)
    name_of = dict(zip(pool.label, pool["class"]))  # labels index the model's classes; a pool may hold some
    names = [name_of.get(i, f"class {i}") for i in range(max(name_of) + 1)]
    rows, first = [], None
    for mu in mus:
        plan = make_plan(names, {c: per_class for c in name_of}, DifficultySpec(mu=mu, sigma=sigma), seed=seed)
        try:
            m = match_pool(pool, plan, Pooling(factor=1, tolerance=tolerance))
        except GenerationError as e:
            raise SystemExit(f"{pool_dir}: {e} (ask for fewer --per-class)") from None
        first = set(m.pool_id) if first is None else first
        rows.append({"mu": mu, "images": len(m), "accepted": round(float(m.accepted.mean()), 4),
                     "faithful": round(float(m.faithful.mean()), 4),
                     "committee_s_mean": round(float(m.selection_s.mean()), 4),
                     f"shared with mu {mus[0]:g}": len(first & set(m.pool_id))})
    return pd.DataFrame(rows)


def rule_frontier(pool_dir: Path, committees, mu: float, per_class: int, sigma: float, tolerance: float,
                  seed: int = 0, ceiling: float | None = None) -> pd.DataFrame:
    """The evaluator's view of the set each label rule matches from one pool to a plan at N(mu, sigma):
    each committee's rule (`match_pool`), then the tiered rule (`match_pool` with the looser committees,
    strictest first: `dacd.generation.match_tiered`)."""
    pools = [scored_pool(pool_dir, list(c)) for c in committees]
    ids = pools[0].id.tolist()
    if any(p.id.tolist() != ids for p in pools[1:]):
        raise SystemExit(f"{pool_dir}: the committees' score caches do not list the same images")
    name_of = dict(zip(pools[0].label, pools[0]["class"]))
    names = [name_of.get(i, f"class {i}") for i in range(max(name_of) + 1)]
    plan = make_plan(names, {c: per_class for c in name_of}, DifficultySpec(mu=mu, sigma=sigma), seed=seed)
    pools = [p.reset_index(drop=True) for p in pools]
    sets = {}
    for members, pool in zip(committees, pools):
        try:
            m = match_pool(pool, plan, Pooling(factor=1, tolerance=tolerance))
        except GenerationError as e:
            raise SystemExit(f"{pool_dir}: {e} (ask for fewer --per-class)") from None
        sets[f"{len(members)} member{'s' * (len(members) > 1)}"] = m  # carries the images' measured_s, prediction
    if len(pools) > 1:
        order = sorted(range(len(pools)), key=lambda i: -len(committees[i]))  # strictest (most members) first
        try:
            m = match_pool(pools[order[0]], plan, Pooling(factor=1, tolerance=tolerance),
                           looser=[pools[i] for i in order[1:]])
        except GenerationError as e:
            raise SystemExit(f"{pool_dir}: {e} (ask for fewer --per-class)") from None
        tiers = " > ".join(str(len(committees[i])) for i in order)
        sets[f"tiered {tiers} members, tolerance {tolerance:g}"] = m
    lo, hi = MEDIUM_BAND
    rows = []
    for rule, took in sets.items():
        medium = float(took.measured_s.between(lo, hi).mean())
        rows.append({"rule": rule, "images": len(took), "medium_band_share": round(medium, 4),
                     **({"x_ceiling": round(medium / ceiling, 3)} if ceiling else {}),
                     "evaluator_accuracy": round(float((took.predicted_class == took["class"]).mean()), 4),
                     "measured_s_mean": round(float(took.measured_s.mean()), 4)})
    return pd.DataFrame(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pool", type=Path, help="a pool folder (manifest.parquet + committee-*.parquet)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--mus", type=float, nargs="*", default=[], help="plans to match (the first is the reference)")
    p.add_argument("--per-class", type=int, default=150, help="--mus: rows per class (150 = r 0.25 of a 10%% subset)")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="--mus: plan seed (train/downstream.py --gen-seed)")
    p.add_argument("--committee", nargs="+", default=None,
                   help="the folders of the committee whose scores to read (default: the pool's only score cache, "
                        "or the shipped committee's when it holds several)")
    p.add_argument("--rules", nargs="+", default=None, metavar="A,B,...",
                   help="committees (comma-separated member folders) whose label rules to compare on one plan")
    p.add_argument("--ceiling", type=float, default=None,
                   help="--rules: the real medium-band share of the same plan (bench/controllability.py's ceiling)")
    args = p.parse_args(argv)
    if args.rules:
        committees = [[f for f in c.split(",") if f] for c in args.rules]
        mu = args.mus[0] if args.mus else 0.5
        table = rule_frontier(args.pool, committees, mu, args.per_class, args.sigma, args.tolerance, args.seed,
                              args.ceiling)
        emit_report(f"pool {args.pool}: plan N({mu:g}, {args.sigma:g}), {args.per_class} rows per class, plan seed "
                    f"{args.seed}; judged by the evaluator (each pool image's measured_s and predicted_class); "
                    f"medium band {list(MEDIUM_BAND)}\n\n{markdown_table(table)}\n", args.out, "summary.md")
        return
    parts = pool_table(args.pool, args.committee)
    if args.mus:
        parts = (*parts, plan_overlap(args.pool, args.mus, args.per_class, args.sigma, args.tolerance,
                                      args.seed, args.committee).set_index("mu"))
    lo, hi = MEDIUM_BAND
    who = f" (committee {' '.join(args.committee)})" if args.committee else ""
    text = (f"pool {args.pool}{who}: faithful = every committee member ranks the label first; faithful_medium = "
            f"faithful and committee-mean s in [{lo}, {hi}]; faithful_medium_judged_medium = the evaluator's "
            f"medium-band share of the faithful_medium images\n\n"
            + "\n\n".join(markdown_table(t.reset_index()) for t in parts) + "\n")
    emit_report(text, args.out, "summary.md")


if __name__ == "__main__":
    main()
