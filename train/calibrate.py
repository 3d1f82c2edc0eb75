#!/usr/bin/env python
"""Fit a dacd model's calibration curve (requested -> measured s, per class) and store it in the
model folder as calibration.json, which enables `calibrated=True` in the pipeline.

    python train/calibrate.py                                   # the embedded dacd model
    python train/calibrate.py --model my/dacd --scorer my/classifier --n 20

Images of a class x requested-s grid (the controllability grid, seed --seed) are measured by
scoring classifiers, never by the evaluation classifier, so `bench/controllability.py --calibrated
--seed 1` judges the curve on other images with a classifier that did not fit it. By default the
curve is fitted to the mean s of the embedded checkpoint's three scoring classifiers (classifier/,
the one that defines s, classifier-2/ and classifier-3/: `--committee` names others, `--scorer` one
alone): aimed at a committee rather than at one network, calibrated requests landed nearer where an
independent judge measures them on the shipped dacd (bench/results/controllability-committee-cal:
Spearman 0.886 against 0.865 over judge seeds 1-3; on two other training runs +0.013 and +0.002, on
the first base's dacd -0.002). A stage of `make checkpoints`.

    python train/calibrate.py --img2img-strength 0.5            # the curve for edits of real images

Curves are noisy at 20 images a cell; two ways to steady them, neither generating anew:

    python train/calibrate.py --seed 2 --out runs/cal-seed2           # a second grid (other noise)
    python train/calibrate.py --merge checkpoints/fashion-mnist/dacd/calibration.json \
        runs/cal-seed2/calibration.json --monotone isotonic            # pool them, least-squares monotone

--merge pools saved curves of the same grid and settings (a mean weighted by their images per cell)
and writes the result to --out (default: the model folder); --monotone isotonic replaces the
running max that makes a curve invertible with the least-squares non-decreasing fit.

With --img2img-strength the grid's images are edits (DifficultyControlledImg2ImgPipeline) of
real *training* images (item k of a class is the same image at every requested s), and the curve
goes to calibration-img2img-strength<S>.json: edits at that strength and the same --steps with
`calibrated=True` use it (strength acts in whole steps, so another step count is another curve).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dacd.calibration import CALIBRATION_NAME, FLAT_SPAN, MONOTONE_RULES, Calibration, img2img_calibration_name
from dacd.classifier import Classifier
from dacd.data import load_dataset
from dacd.defaults import CALIBRATION_COMMITTEE, EMBEDDED_CHECKPOINT, LAYOUT, SAMPLING
from dacd.evaluation import generate_rows, grid_rows
from dacd.generation import committee_scores
from dacd.img2img import DifficultyControlledImg2ImgPipeline
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings
from dacd.weights import model_fingerprint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EMBEDDED_CHECKPOINT / LAYOUT.dacd))
    p.add_argument("--scorer", default=None,
                   help="fit the curve to this one classifier's s, e.g. the one that defines s (default: the "
                        "embedded checkpoint's committee, --committee)")
    p.add_argument("--committee", nargs="+", default=None, metavar="CLASSIFIER",
                   help="fit the curve to the mean s of these classifiers (default, when --scorer is not given "
                        "either: the embedded checkpoint's " + ", ".join(CALIBRATION_COMMITTEE) + "); never the "
                        "evaluation classifier, which judges the curve (bench/controllability.py refuses a curve "
                        "it fitted)")
    p.add_argument("--evaluator", default=str(EMBEDDED_CHECKPOINT / LAYOUT.evaluator),
                   help="the evaluation classifier, refused as a member (by name and by content)")
    p.add_argument("--n", type=int, default=20, help="images per (class, requested-s) cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=SAMPLING.num_inference_steps)
    p.add_argument("--scheduler", default=SAMPLING.scheduler)
    p.add_argument("--guidance", type=float, default=SAMPLING.guidance_scale)
    p.add_argument("--difficulty-guidance", type=float, default=SAMPLING.difficulty_guidance_scale)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--img2img-strength", type=float, default=None,
                   help="fit the curve of edits of real training images at this strength, in (0, 1]")
    p.add_argument("--data", default="fashion-mnist", help="edits: the real images ('fashion-mnist' or an ImageFolder)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for calibration.json (default: the model folder)")
    p.add_argument("--monotone", choices=MONOTONE_RULES, default=None,
                   help="how the curve is made non-decreasing, stored in its meta (default: running-max; "
                        "with --merge, the first curve's rule)")
    p.add_argument("--merge", nargs="+", default=None, metavar="CALIBRATION_JSON",
                   help="generate nothing: pool these saved curves (same grid and settings) into one, named "
                        "as the pipeline reads it (the edits curve of their strength, else calibration.json); "
                        "only --monotone, --out and --model apply")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def merge(args) -> int:
    try:
        curves = [Calibration.load(Path(f).parent, name=Path(f).name) for f in args.merge]
    except ValueError as e:
        raise SystemExit(str(e))
    missing = [f for f, c in zip(args.merge, curves) if c is None]
    if missing:
        raise SystemExit(f"no calibration file at {', '.join(missing)}")
    try:
        calib = Calibration.pool(curves, monotone=args.monotone)
    except ValueError as e:
        raise SystemExit(f"cannot merge {', '.join(args.merge)}: {e}")
    strength = calib.meta.get("img2img_strength")
    name = CALIBRATION_NAME if strength is None else img2img_calibration_name(strength)
    path = calib.save(args.out or args.model, name=name)
    print(f"wrote {path} ({calib.meta.get('n_per_cell', 'unrecorded')} images per cell from {len(curves)} "
          f"curves, monotone {calib.monotone})")
    config = Path(args.model) / LAYOUT.dacd_config  # class names for the report, when the model folder has them
    names = json.loads(config.read_text()).get("class_names") if config.is_file() else None
    report_reach(calib, names if names and len(names) == len(calib.measured)
                 else [str(c) for c in sorted(map(int, calib.measured))])
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    edits = args.img2img_strength is not None
    if edits and not 0 < args.img2img_strength <= 1:
        raise SystemExit(f"--img2img-strength must be in (0, 1], got {args.img2img_strength}")
    cls = DifficultyControlledImg2ImgPipeline if edits else DifficultyControlledPipeline
    pipe = cls.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.has_difficulty:
        raise SystemExit(f"{args.model} has no difficulty encoder: only a dacd model has a calibration curve")
    if args.committee and args.scorer:
        raise SystemExit("pass --scorer (one classifier) or --committee (several), not both")
    members = args.committee or ([args.scorer] if args.scorer else
                                 [str(EMBEDDED_CHECKPOINT / name) for name in CALIBRATION_COMMITTEE])
    absent = [m for m in members if not (Path(m) / "config.json").is_file()]
    if absent:
        raise SystemExit(f"no classifier at {', '.join(absent)}: `python train/make_checkpoints.py --stages "
                         "classifier-2 classifier-3` builds the embedded ones, or pass --scorer/--committee")
    fingerprints = [model_fingerprint(m) for m in members]
    judge_fp = model_fingerprint(args.evaluator) if Path(args.evaluator).is_dir() else None
    judge = [m for m, fp in zip(members, fingerprints) if Path(m).name == LAYOUT.evaluator or fp == judge_fp]
    if judge:
        raise SystemExit(f"{', '.join(judge)} is the evaluation classifier, which judges calibrated sampling "
                         "(bench/controllability.py): fit the curve with the scoring classifier and its committee")
    scorers = [Classifier.from_pretrained(m) for m in members]
    settings = SamplingSettings(args.steps, args.scheduler, args.guidance, args.difficulty_guidance)
    rows = grid_rows(list(range(pipe.num_classes)), args.n, args.seed)
    names = [Path(m).name for m in members]
    meta = {"measured_by": names[0] if len(names) == 1 else "committee mean of " + ", ".join(names),
            **({"committee": names} if len(names) > 1 else {}),
            "member_fingerprints": fingerprints, "n_per_cell": args.n, "steps": args.steps,
            "scheduler": args.scheduler, "guidance_scale": args.guidance,
            "difficulty_guidance_scale": args.difficulty_guidance, "seed": args.seed,
            "monotone": args.monotone or "running-max"}
    extra, name = {}, None
    if edits:
        train = load_dataset(args.data, "train", args.data_dir)
        if list(train.class_names) != list(pipe.class_names):
            raise SystemExit(f"{args.data} has classes {list(train.class_names)}, the model {list(pipe.class_names)}")
        k = rows.groupby(["label", "requested_s"]).cumcount().to_numpy()  # item k: the same at every level
        items = {c: np.random.default_rng([args.seed, c, 3]).permutation(np.flatnonzero(train.labels == c))[:args.n]
                 for c in range(pipe.num_classes)}
        pos = np.array([items[c][j] for c, j in zip(rows.label, k)])
        extra = {"sources": [im.transpose(1, 2, 0) for im in train.images[pos]], "strength": args.img2img_strength}
        meta.update(img2img_strength=args.img2img_strength, sources=f"{train.name} train, {args.n} per class")
        name = img2img_calibration_name(args.img2img_strength)
    images = generate_rows(pipe, rows, settings, batch_size=args.batch_size, progress=not args.no_progress,
                           desc="calibration grid", **extra)
    s, _ = committee_scores(scorers, images, rows.label.to_numpy())  # one member: its own s
    calib = Calibration.fit(rows.assign(measured_s=s), meta=meta)
    path = calib.save(args.out or args.model, **({"name": name} if name else {}))
    print(f"wrote {path}")
    report_reach(calib, list(pipe.class_names))
    return 0


def report_reach(calib: Calibration, class_names: list[str]) -> None:
    """Print the measured s each class's dial reaches (the curve's first and last knots), and name
    the classes it barely moves."""
    print("measured s the dial reaches (the curve's first-last knot): " + ", ".join(
        f"{class_names[c]} {lo:.2f}-{hi:.2f}" for c in range(len(class_names)) for lo, hi in [calib.reach(c)]))
    flat = calib.flat_classes()
    if flat:
        edits = calib.meta.get("img2img_strength") is not None
        print(f"warning: the dial barely moves {', '.join(class_names[c] for c in flat)} (a span under "
              f"{FLAT_SPAN:g} of measured s): calibrated {'edits' if edits else 'images'} of "
              f"{'this class' if len(flat) == 1 else 'these classes'} measure about the same at every request. The "
              "curve is saved as fitted; " + ("a higher --img2img-strength moves edits further (bench/edits.py)"
                                              if edits else
                                              "this is how weak training runs fail, and a run with another --seed "
                                              "may move them (--balance-per-class did not prevent it: "
                                              "bench/results/controllability-spread, controllability-classbalance)"))


if __name__ == "__main__":
    sys.exit(main())
