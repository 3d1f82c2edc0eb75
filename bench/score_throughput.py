#!/usr/bin/env python
"""Images/s of the scoring classifier: training (forward + backward + AdamW) and scoring (inference).

    python bench/score_throughput.py [--arch resnet10t] [--n 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from dacd.classifier import TrainConfig, build_classifier, predict, train_classifier
from dacd.data import load_fashion_mnist


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet10t")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_fashion_mnist("train", args.data_dir).subset(range(args.n))
    torch.manual_seed(0)
    model = build_classifier(args.arch, in_chans=1, num_classes=10, mean=0.286, std=0.353)
    train_classifier(model, ds.images[:256], ds.labels[:256], TrainConfig(epochs=1), progress=False)  # warm-up
    t0 = time.perf_counter()
    train_classifier(model, ds.images, ds.labels, TrainConfig(epochs=1), progress=False)
    train_ips = args.n / (time.perf_counter() - t0)
    predict(model, ds.images[:512])
    t0 = time.perf_counter()
    predict(model, ds.images)
    score_ips = args.n / (time.perf_counter() - t0)
    print(f"{args.arch}, {torch.get_num_threads()} threads, {args.n} images of 32x32:")
    print(f"  training: {train_ips:.0f} images/s  (60k-image epoch ~{60000 / train_ips:.0f} s)")
    print(f"  scoring:  {score_ips:.0f} images/s  (60k images ~{60000 / score_ips:.0f} s)")


if __name__ == "__main__":
    main()
