#!/usr/bin/env python
"""Fit a dacd model's calibration curve (requested -> measured s, per class) and store it in the
model folder as calibration.json, which enables `calibrated=True` in the pipeline.

    python train/calibrate.py                                   # the embedded dacd model
    python train/calibrate.py --model my/dacd --scorer my/classifier --n 20

Images of a class x requested-s grid (the controllability grid, seed --seed) are measured by
the scoring classifier (the one that defines s), never by the evaluation classifier, so
`bench/controllability.py --calibrated --seed 1` judges the curve on other images with a
classifier that did not fit it. A stage of `make checkpoints`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dacd.calibration import Calibration
from dacd.classifier import Classifier
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT, SAMPLING
from dacd.evaluation import generate_rows, grid_rows, measured_curve_rows
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EMBEDDED_CHECKPOINT / LAYOUT.dacd))
    p.add_argument("--scorer", default=str(EMBEDDED_CHECKPOINT / LAYOUT.classifier),
                   help="the classifier that defines s (the scoring classifier)")
    p.add_argument("--n", type=int, default=20, help="images per (class, requested-s) cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=SAMPLING.num_inference_steps)
    p.add_argument("--scheduler", default=SAMPLING.scheduler)
    p.add_argument("--guidance", type=float, default=SAMPLING.guidance_scale)
    p.add_argument("--difficulty-guidance", type=float, default=SAMPLING.difficulty_guidance_scale)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--out", default=None, help="folder for calibration.json (default: the model folder)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    pipe = DifficultyControlledPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.has_difficulty:
        raise SystemExit(f"{args.model} has no difficulty encoder: only a dacd model has a calibration curve")
    scorer = Classifier.from_pretrained(args.scorer)
    settings = SamplingSettings(args.steps, args.scheduler, args.guidance, args.difficulty_guidance)
    rows = grid_rows(list(range(pipe.num_classes)), args.n, args.seed)
    images = generate_rows(pipe, rows, settings, batch_size=args.batch_size, progress=not args.no_progress,
                           desc="calibration grid")
    calib = Calibration.fit(measured_curve_rows(scorer, images, rows),
                            meta={"measured_by": Path(args.scorer).name, "n_per_cell": args.n, "steps": args.steps,
                                  "scheduler": args.scheduler, "guidance_scale": args.guidance,
                                  "difficulty_guidance_scale": args.difficulty_guidance, "seed": args.seed})
    path = calib.save(args.out or args.model)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
