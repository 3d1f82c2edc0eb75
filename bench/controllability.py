#!/usr/bin/env python
"""Does the difficulty dial work? Generate a class x requested-s grid, measure every image
with the evaluation classifier, and compare with the real-data ceiling.

    python bench/controllability.py                  # shipped embedded default, N=20 per cell
    python bench/controllability.py --quick          # a few minutes on CPU (CI)
    python bench/controllability.py --model my/dacd --baseline my/baseline --evaluator my/evaluator \
        --scores my/scores.parquet --data path/to/imagefolder

The experiment itself is `dacd.evaluation.controllability`; this script runs it and prints.
Writes cells.csv, summary.json, controllability.html and the requested -> measured curve of
this grid (calibration.json, measured by the classifier that defines s, --scorer) to --out.
The curve the pipeline uses for `calibrated=True` is fitted by `train/calibrate.py` (a
`make checkpoints` stage; the same grid at seed 0); judge it on other seeds:

    python bench/controllability.py --calibrated --seed 1 --out bench/results/controllability-calibrated
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dacd.calibration import Calibration
from dacd.classifier import Classifier
from dacd.data import load_dataset, resolve_class
from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, LAYOUT, MEDIUM_BAND, SAMPLING
from dacd.difficulty import load_scores
from dacd.evaluation import controllability, measured_curve_rows
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings
from dacd.weights import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]
CK = EMBEDDED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(CK / LAYOUT.dacd))
    p.add_argument("--baseline", default=str(CK / LAYOUT.baseline), help="'' to skip")
    p.add_argument("--evaluator", default=str(CK / LAYOUT.evaluator))
    p.add_argument("--scorer", default=str(CK / LAYOUT.classifier),
                   help="classifier that defines s (the scoring one): the calibration curve is measured with it, "
                        "so the evaluator stays independent of calibrated sampling ('' to use the evaluator)")
    p.add_argument("--calibrated", action="store_true",
                   help="sample with calibrated=True (the model folder's curve); use another --seed than the "
                        "run that wrote the curve")
    p.add_argument("--scores", default=str(CK / LAYOUT.scores))
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=20, help="images per (class, requested-s) cell")
    p.add_argument("--n-medium", type=int, default=100, help="images per class drawn at s ~ N(0.5, 0.1)")
    p.add_argument("--classes", nargs="*", default=None, help="class names or ids (default: all)")
    p.add_argument("--steps", type=int, default=SAMPLING.num_inference_steps)
    p.add_argument("--scheduler", default=SAMPLING.scheduler)
    p.add_argument("--guidance", type=float, default=SAMPLING.guidance_scale)
    p.add_argument("--difficulty-guidance", type=float, default=SAMPLING.difficulty_guidance_scale)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N=3, 10 per class at N(0.5, 0.1), 10 steps")
    p.add_argument("--out", default=None, help="default bench/results/controllability[-quick]")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_medium, args.steps = 3, 10, min(args.steps, 10)
    args.out = args.out or str(ROOT / "bench" / "results" / ("controllability-quick" if args.quick else "controllability"))
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DifficultyControlledPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.has_difficulty:
        raise SystemExit(f"{args.model} has no difficulty encoder: pass a dacd folder as --model")
    baseline = None
    if args.baseline and Path(args.baseline).is_dir():
        baseline = DifficultyControlledPipeline.from_pretrained(args.baseline)
        baseline.set_progress_bar_config(disable=True)
    if args.calibrated:
        curve = pipe.calibration  # loaded with the model
        if curve is None:
            raise SystemExit(f"{args.model} has no {LAYOUT.calibration}: fit one with train/calibrate.py --model {args.model}")
        fitters = curve.meta.get("committee") or [curve.meta.get("measured_by")]
        if Path(args.evaluator).name in fitters or model_fingerprint(args.evaluator) in curve.meta.get(
                "member_fingerprints", []):  # by name (older curves record only that) or by content
            raise SystemExit(f"the calibration curve of {args.model} was fitted with {Path(args.evaluator).name}, the "
                             "evaluator that judges it: refit it with train/calibrate.py without that classifier")
    evaluator = Classifier.from_pretrained(args.evaluator)
    names = list(pipe.class_names)
    classes = (None if not args.classes else
               sorted({resolve_class(int(c) if str(c).isdigit() else c, names) for c in args.classes}))
    settings = SamplingSettings(args.steps, args.scheduler, args.guidance, args.difficulty_guidance, args.calibrated)
    report_ = controllability(pipe, evaluator, load_scores(args.scores), load_dataset(args.data, "train", args.data_dir),
                              load_dataset(args.data, "test", args.data_dir), settings, classes=classes, n=args.n,
                              n_medium=args.n_medium, seed=args.seed, baseline=baseline, batch_size=args.batch_size,
                              progress=not args.no_progress)
    summary = {"settings": {k: v for k, v in vars(args).items() if k not in ("no_progress",)}, **report_.summary}

    # this grid's curve requested -> measured, by the classifier that defines s (--scorer; not the evaluator).
    # The model's own curve is train/calibrate.py's, by default fitted to a committee's mean s instead.
    scorer_path = args.scorer if args.scorer and Path(args.scorer).is_dir() else args.evaluator
    scorer = Classifier.from_pretrained(scorer_path) if scorer_path != args.evaluator else evaluator
    calib = Calibration.fit(measured_curve_rows(scorer, report_.images, report_.grid[["label", "requested_s", "seed"]]),
                            meta={"measured_by": Path(scorer_path).name, "n_per_cell": args.n, "steps": args.steps,
                                  "scheduler": args.scheduler, "guidance_scale": args.guidance,
                                  "difficulty_guidance_scale": args.difficulty_guidance, "seed": args.seed})
    if not args.calibrated:  # the curve this grid measures (train/calibrate.py writes the model's own)
        calib.save(out)
    table = report_.cells
    table.to_csv(out / "cells.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_html(table, summary, names, out / "controllability.html")
    report(summary, out)
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


def report(summary, out):
    d, c = summary["dacd"], summary["real_ceiling"]
    print(f"Spearman(requested, cell means): dacd {d['spearman_overall']:.3f} | real ceiling {c['spearman_overall']:.3f}"
          f" | dacd on cells with >= 50 real training images {summary['dacd_eligible_cells']['spearman_overall']:.3f}")
    print(f"MAE of cell means: dacd {d['mae']:.3f} | real ceiling {c['mae']:.3f}")
    print("per class (dacd Spearman / rises):",
          {k: (round(v, 3), d["rises_per_class"][k]) for k, v in d["spearman_per_class"].items()})
    print(f"evaluator accuracy on images requested at s <= 0.2: {summary['accuracy_at_s_le_0.2']:.3f}")
    m = summary["medium_band_share"]
    print(f"medium-band share {list(MEDIUM_BAND)} at s ~ N({DIFFICULTY.mu}, {DIFFICULTY.sigma}):", {k: round(v, 3) for k, v in m.items()})
    print(f"KID (evaluator features): low s {summary['kid_low_s_mean']:.4f}, high s {summary['kid_high_s_mean']:.4f}, "
          f"ratio {summary['kid_high_over_low']:.2f}")
    print("confusions at high s (TV distance to real OOF errors):",
          {k: round(v, 3) for k, v in summary["confusion_at_high_s"].items()})
    print("nearest training image (pixel L2):", {k: round(v, 3) for k, v in summary["nearest_train_distance"].items()})
    print(f"{summary['images_generated']} grid images in {summary['generation_seconds']:.0f} s; "
          f"total {summary['total_seconds']:.0f} s; wrote {out}/cells.csv, summary.json, controllability.html")


if __name__ == "__main__":
    main()
