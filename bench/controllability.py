#!/usr/bin/env python
"""Does the difficulty dial work? Generate a class x requested-s grid, measure every image
with the evaluation classifier, and compare with the real-data ceiling.

    python bench/controllability.py                  # shipped embedded default, N=20 per cell
    python bench/controllability.py --quick          # a few minutes on CPU (CI)
    python bench/controllability.py --model my/dacd --baseline my/baseline --evaluator my/evaluator \
        --scores my/scores.parquet --data path/to/imagefolder

Prints the figures and writes cells.csv, summary.json and controllability.html to --out;
--write-calibration stores the requested -> measured curve in the model folder, which
enables `calibrated=True` in the pipeline. The curve is measured with the classifier that
defines s (--scorer), so the evaluator that judges calibrated sampling never fitted it:

    python bench/controllability.py --write-calibration                    # fit the curve (seeds 0)
    python bench/controllability.py --calibrated --seed 1 --out bench/results/controllability-calibrated
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dacd.evaluation import (MEDIUM_BAND, S_BINS, bin_of, cell_table, confusion_distance,  # noqa: E402
                             controllability_summary, draw_difficulties, error_distribution, kid, measure,
                             medium_share, nearest_distance, real_ceiling_sample)
from dacd.pipeline import DEFAULTS  # noqa: E402

CK = ROOT / "checkpoints" / "fashion-mnist"
CELL_COLUMNS = ["source", "label", "class_name", "bin", "n", "measured_mean", "measured_std", "accuracy",
                "abs_error", "real_train_count", "kid"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(CK / "dacd"))
    p.add_argument("--baseline", default=str(CK / "baseline"), help="'' to skip")
    p.add_argument("--evaluator", default=str(CK / "evaluator"))
    p.add_argument("--scorer", default=str(CK / "classifier"),
                   help="classifier that defines s (the scoring one): the calibration curve is measured with it, "
                        "so the evaluator stays independent of calibrated sampling ('' to use the evaluator)")
    p.add_argument("--calibrated", action="store_true",
                   help="sample with calibrated=True (the model folder's curve); use another --seed than the "
                        "run that wrote the curve")
    p.add_argument("--scores", default=str(CK / "scores.parquet"))
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=20, help="images per (class, requested-s) cell")
    p.add_argument("--n-medium", type=int, default=100, help="images per class drawn at s ~ N(0.5, 0.1)")
    p.add_argument("--classes", nargs="*", default=None, help="class names or ids (default: all)")
    p.add_argument("--steps", type=int, default=DEFAULTS.num_inference_steps)
    p.add_argument("--scheduler", default=DEFAULTS.scheduler)
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance_scale)
    p.add_argument("--difficulty-guidance", type=float, default=DEFAULTS.difficulty_guidance_scale)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N=3, 10 per class at N(0.5, 0.1), 10 steps")
    p.add_argument("--out", default=None, help="default bench/results/controllability[-quick]")
    p.add_argument("--write-calibration", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_medium, args.steps = 3, 10, min(args.steps, 10)
    args.out = args.out or str(ROOT / "bench" / "results" / ("controllability-quick" if args.quick else "controllability"))
    return args


def generate(pipe, labels, s, seeds, args, progress, desc):
    """Images as float (N, C, H, W) in [0, 1], one generator per image (seed -> noise)."""
    import torch
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(labels), args.batch_size), desc=desc, disable=not progress):
        sl = slice(i, i + args.batch_size)
        gens = [torch.Generator().manual_seed(int(x)) for x in seeds[sl]]
        kw = dict(guidance_scale=args.guidance, num_inference_steps=args.steps, scheduler=args.scheduler,
                  generator=gens, output_type="np")
        if pipe.has_difficulty:
            kw["difficulty_guidance_scale"] = args.difficulty_guidance
            kw["calibrated"] = args.calibrated
        res = pipe([int(c) for c in labels[sl]], [float(v) for v in s[sl]], **kw)
        out.append(res.images.transpose(0, 3, 1, 2))
    return np.concatenate(out)


def main(argv=None):
    args = parse_args(argv)
    from dacd.classifier import Classifier
    from dacd.data import load_dataset
    from dacd.difficulty import load_scores
    from dacd.pipeline import DifficultyControlledPipeline

    t_start = time.time()
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DifficultyControlledPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.has_difficulty:
        raise SystemExit(f"{args.model} has no difficulty encoder: pass a dacd folder as --model")
    evaluator = Classifier.from_pretrained(args.evaluator)
    scores = load_scores(args.scores)
    train = load_dataset(args.data, "train", args.data_dir)
    test = load_dataset(args.data, "test", args.data_dir)
    names = list(pipe.class_names)
    from dacd.data import resolve_class

    classes = (list(range(len(names))) if not args.classes else
               sorted({resolve_class(int(c) if str(c).isdigit() else c, names) for c in args.classes}))
    tr_scores = scores[scores.split == "train"].set_index("id").loc[list(train.ids)].reset_index()
    te_scores = scores[scores.split == "test"].set_index("id").loc[list(test.ids)].reset_index()

    # 1. the grid: every class x requested bin, N images, fixed seeds
    labels = np.repeat(classes, len(S_BINS) * args.n)
    req = np.tile(np.repeat(S_BINS, args.n), len(classes))
    seeds = args.seed * 10**7 + labels * 10**5 + np.tile(np.arange(len(S_BINS) * args.n), len(classes))
    t0 = time.time()
    imgs = generate(pipe, labels, req, seeds, args, progress, "grid")
    gen_seconds = time.time() - t0
    m, feats = measure(evaluator, imgs, labels)
    grid = pd.DataFrame({"label": labels, "requested_s": req, "seed": seeds, **m})
    cells = cell_table(grid, names)

    # 2. real-data ceiling: held-out (test) images binned by scoring s, measured by the evaluator
    rm, real_feats_test = measure(evaluator, test.images, test.labels)
    real = pd.DataFrame({"label": test.labels, "requested_s": te_scores.s.to_numpy(), **rm})
    real = real[real.label.isin(classes)]
    ceil_cells = cell_table(real, names)

    # counts of real training images per class and bin: where the model has something to learn from
    tr_bins = S_BINS[bin_of(tr_scores.s)]
    train_counts = pd.Series(1, index=pd.MultiIndex.from_arrays([train.labels, tr_bins])).groupby(level=[0, 1]).sum()
    for c in (cells, ceil_cells):
        c["real_train_count"] = [int(train_counts.get((l, b), 0)) for l, b in zip(c.label, c.bin)]

    # 3. fidelity: KID per class and bin against real training images of that class and bin
    _, train_feats = measure(evaluator, train.images, train.labels)
    kids = []
    for r in cells.itertuples():
        real_idx = np.flatnonzero((train.labels == r.label) & (tr_bins == r.bin))[:500]
        gen_idx = np.flatnonzero((grid.label == r.label).to_numpy() & np.isclose(grid.requested_s, r.bin))
        kids.append(kid(train_feats[real_idx], feats[gen_idx]) if len(real_idx) >= 10 else np.nan)
    cells["kid"] = kids
    ceil_cells["kid"] = np.nan
    low, high = cells[cells.bin <= 0.2], cells[cells.bin >= 0.7]
    kid_low, kid_high = float(np.nanmean(low.kid)), float(np.nanmean(high.kid))

    # wrong predictions at high s: do they follow the real confusions?
    hi = grid[grid.requested_s >= 0.7]
    gen_err = error_distribution(hi.label, hi.pred, len(names))
    tr_hi = tr_scores[tr_scores.s > 0.7]
    real_err = error_distribution(tr_hi.label, tr_hi.pred, len(names))
    uniform = np.ones((len(names), len(names))) - np.eye(len(names))
    conf = {"generated_vs_real": confusion_distance(gen_err, real_err),
            "uniform_vs_real": confusion_distance(uniform, real_err),
            "generated_wrong_share_at_high_s": float((hi.pred != hi.label).mean()) if len(hi) else float("nan")}

    # memorisation: pixel distance to the nearest training image of the same class
    nn_gen, nn_real = [], []
    for c in classes:
        ref = train.as_float(np.flatnonzero(train.labels == c))
        nn_gen.append(nearest_distance(imgs[labels == c], ref))
        nn_real.append(nearest_distance(test.as_float(np.flatnonzero(test.labels == c))[:200], ref))
    nn = {"generated_median": float(np.median(np.concatenate(nn_gen))),
          "real_test_median": float(np.median(np.concatenate(nn_real))),
          "generated_min": float(np.min(np.concatenate(nn_gen)))}

    # 4. medium band at s ~ N(0.5, 0.1): dacd, baseline, real ceiling
    med_labels = np.repeat(classes, args.n_medium)
    med_s = draw_difficulties(len(med_labels), 0.5, 0.1, seed=args.seed + 1)
    med_seeds = 10**9 + np.arange(len(med_labels)) + args.seed * 10**7
    med_dacd = measure(evaluator, generate(pipe, med_labels, med_s, med_seeds, args, progress, "N(0.5,0.1)"),
                       med_labels)[0].measured_s
    medium = {"dacd": medium_share(med_dacd)}
    if args.baseline and Path(args.baseline).is_dir():
        base = DifficultyControlledPipeline.from_pretrained(args.baseline)
        base.set_progress_bar_config(disable=True)
        med_base = measure(evaluator, generate(base, med_labels, med_s, med_seeds, args, progress, "baseline"),
                           med_labels)[0].measured_s
        medium["baseline"] = medium_share(med_base)
    te_pos = real_ceiling_sample(te_scores.reset_index(drop=True), med_s, med_labels)
    medium["real_ceiling"] = medium_share(rm.measured_s.to_numpy()[te_pos])
    medium["dacd_over_ceiling"] = medium["dacd"] / medium["real_ceiling"] if medium["real_ceiling"] else float("nan")

    # 5. summaries, calibration, files
    eligible = cells[cells.real_train_count >= 50]
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_progress",)},
        "dacd": controllability_summary(cells),
        "dacd_eligible_cells": controllability_summary(eligible),
        "real_ceiling": controllability_summary(ceil_cells),
        "accuracy_at_s_le_0.2": float((grid[grid.requested_s <= 0.2].pred == grid[grid.requested_s <= 0.2].label).mean()),
        "medium_band_share": medium,
        "medium_band": MEDIUM_BAND,
        "kid_low_s_mean": kid_low, "kid_high_s_mean": kid_high,
        "kid_high_over_low": kid_high / kid_low if kid_low > 0 else float("nan"),
        "confusion_at_high_s": conf,
        "nearest_train_distance": nn,
        "generation_seconds": gen_seconds, "images_generated": int(len(grid)),
        "total_seconds": time.time() - t_start,
    }
    from dacd.calibration import Calibration

    # the curve requested -> measured, measured by the classifier that defines s (not the evaluator)
    scorer_path = args.scorer if args.scorer and Path(args.scorer).is_dir() else args.evaluator
    scorer = Classifier.from_pretrained(scorer_path) if scorer_path != args.evaluator else evaluator
    by_scorer = cell_table(grid.assign(**measure(scorer, imgs, labels)[0]), names)
    calib = Calibration(requested=[float(b) for b in S_BINS],
                        measured={str(c): [float(v) for v in by_scorer[by_scorer.label == c].sort_values("bin")
                                           .measured_mean] for c in classes},
                        meta={"measured_by": str(scorer_path), "n_per_cell": args.n, "steps": args.steps,
                              "scheduler": args.scheduler, "guidance_scale": args.guidance,
                              "difficulty_guidance_scale": args.difficulty_guidance, "seed": args.seed})
    if not args.calibrated:  # a calibrated run measures the curve in use, it does not replace it
        calib.save(out)
        if args.write_calibration:
            calib.save(args.model)
    table = pd.concat([cells.assign(source="dacd"), ceil_cells.assign(source="real_ceiling")])[CELL_COLUMNS]
    table.to_csv(out / "cells.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_html(table, summary, names, out / "controllability.html")
    report(summary, cells, ceil_cells, out)
    return summary


def write_html(table, summary, names, path):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = sorted(table.label.unique())
    cols = 5
    rows = int(np.ceil(len(classes) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[names[c] for c in classes], shared_yaxes=True)
    for i, c in enumerate(classes):
        r, k = divmod(i, cols)
        for source, color in (("dacd", "#e76f51"), ("real_ceiling", "#264653")):
            sub = table[(table.source == source) & (table.label == c)].sort_values("bin")
            fig.add_trace(go.Scatter(x=sub.bin, y=sub.measured_mean, mode="lines+markers", name=source,
                                     line=dict(color=color), showlegend=i == 0,
                                     error_y=dict(type="data", array=sub.measured_std.fillna(0), visible=True)),
                          row=r + 1, col=k + 1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                                 showlegend=False), row=r + 1, col=k + 1)
    fig.update_layout(title=f"requested vs measured s (Spearman dacd {summary['dacd']['spearman_overall']:.3f}, "
                            f"real {summary['real_ceiling']['spearman_overall']:.3f})", height=300 * rows)
    fig.write_html(path, include_plotlyjs=True)


def report(summary, cells, ceil_cells, out):
    d, c = summary["dacd"], summary["real_ceiling"]
    print(f"Spearman(requested, cell means): dacd {d['spearman_overall']:.3f} | real ceiling {c['spearman_overall']:.3f}"
          f" | dacd on cells with >= 50 real training images {summary['dacd_eligible_cells']['spearman_overall']:.3f}")
    print(f"MAE of cell means: dacd {d['mae']:.3f} | real ceiling {c['mae']:.3f}")
    print("per class (dacd Spearman / rises):",
          {k: (round(v, 3), d["rises_per_class"][k]) for k, v in d["spearman_per_class"].items()})
    print(f"evaluator accuracy on images requested at s <= 0.2: {summary['accuracy_at_s_le_0.2']:.3f}")
    m = summary["medium_band_share"]
    print("medium-band share [0.3, 0.7] at s ~ N(0.5, 0.1):", {k: round(v, 3) for k, v in m.items()})
    print(f"KID (evaluator features): low s {summary['kid_low_s_mean']:.4f}, high s {summary['kid_high_s_mean']:.4f}, "
          f"ratio {summary['kid_high_over_low']:.2f}")
    print("confusions at high s (TV distance to real OOF errors):",
          {k: round(v, 3) for k, v in summary["confusion_at_high_s"].items()})
    print("nearest training image (pixel L2):", {k: round(v, 3) for k, v in summary["nearest_train_distance"].items()})
    print(f"{summary['images_generated']} grid images in {summary['generation_seconds']:.0f} s; "
          f"total {summary['total_seconds']:.0f} s; wrote {out}/cells.csv, summary.json, controllability.html")


if __name__ == "__main__":
    main()
