#!/usr/bin/env python
"""Out-of-fold difficulty scores + data maps for a dataset; ships the scoring classifier.

    python train/score_difficulty.py                       # Fashion-MNIST, k=5, ~30 min on 2 cores
    python train/score_difficulty.py --subset 2000 --epochs 1 --output-dir /tmp/scores
    python train/score_difficulty.py --data path/to/imagefolder --arch resnet18

Writes `scores.parquet`, `scores_summary.json` and `classifier/` to --output-dir. Kill it
at any time: rerunning the same command continues at the first unfinished fold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from dacd.data import load_dataset
from dacd.defaults import EMBEDDED_CHECKPOINT
from dacd.difficulty import ScoreConfig, run_scoring, save_scores

D = ScoreConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: $DACD_FASHION_MNIST_DIR "
                   "or /usr/share/datasets/fashion-mnist)")
    p.add_argument("--image-size", type=int, default=32, help="ImageFolder resolution")
    p.add_argument("--output-dir", default=str(EMBEDDED_CHECKPOINT))
    p.add_argument("--work-dir", default="runs/score", help="resumable per-fold state")
    p.add_argument("--k", type=int, default=D.k)
    p.add_argument("--arch", default=D.arch, help="timm model name")
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--subset", type=int, default=None, help="use the first N training images (and N/5 test)")
    p.add_argument("--restart", action="store_true", help="discard finished folds in --work-dir")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    accelerator = Accelerator()
    t0 = time.time()
    train = load_dataset(args.data, "train", args.data_dir, args.image_size)
    try:
        test = load_dataset(args.data, "test", args.data_dir, args.image_size)
    except Exception:
        test = None
        print("no test split found: scoring training images only")
    if args.subset:
        train = train.subset(range(min(args.subset, len(train))))
        if test is not None:
            test = test.subset(range(min(max(args.subset // 5, 1), len(test))))
    cfg = ScoreConfig(k=args.k, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed)
    print(f"scoring {len(train)} training images with {cfg.k}-fold {cfg.arch} on {accelerator.device}")
    result = run_scoring(train, test, cfg, args.work_dir, device=accelerator.device, restart=args.restart,
                         stop_after=args.stop_after, progress=not args.no_progress)
    if result is None:
        print(f"stopped after {args.stop_after} stage(s); rerun to continue")
        return 3
    table, summary, model = result
    out = Path(args.output_dir)
    save_scores(table, summary, out)
    if (out / "classifier").exists():
        shutil.rmtree(out / "classifier")
    model.save_pretrained(out / "classifier", dtype=torch.float16)  # fp16 on disk: each file < 10 MiB
    print(f"out-of-fold accuracy {summary['oof_accuracy']:.4f}; per fold "
          + ", ".join(f"{a:.4f}" for a in summary["fold_heldout_accuracy"]))
    if summary["test_accuracy"] is not None:
        print(f"test accuracy (final classifier) {summary['test_accuracy']:.4f}")
    print("share of s:", {k: round(v, 4) for k, v in summary["s_share"].items()})
    print("regions:", summary["region_counts"])
    print(f"wrote {out}/scores.parquet, scores_summary.json, classifier/ in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
