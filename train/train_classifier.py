#!/usr/bin/env python
"""Train a timm classifier on all training images of a dataset and save it (safetensors + config).

Used for the *evaluation classifier* (`evaluator/`), which only measures generated images:
it must differ from the scoring classifier in architecture and seed.

    python train/train_classifier.py                                     # Fashion-MNIST -> checkpoints/fashion-mnist/evaluator
    python train/train_classifier.py --data path/to/imagefolder --arch resnet50 --image-size 224 --output-dir out/evaluator
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from dacd.classifier import (
    TrainConfig,
    build_classifier,
    image_stats,
    predict,
    train_classifier,
)
from dacd.data import load_dataset
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT

D = TrainConfig()
EVALUATOR_ARCH, EVALUATOR_SEED = "resnet18", 1  # the scoring classifier is resnet10t, seed 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--output-dir", default=str(EMBEDDED_CHECKPOINT / LAYOUT.evaluator))
    p.add_argument("--arch", default=EVALUATOR_ARCH)
    p.add_argument("--seed", type=int, default=EVALUATOR_SEED)
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    device = Accelerator().device
    out = Path(args.output_dir)
    if (out / "metrics.json").is_file() and json.loads((out / "metrics.json").read_text()).get("args") == vars(args):
        print(f"{out} is already trained with these settings; delete it to retrain")
        return 0
    train = load_dataset(args.data, "train", args.data_dir, args.image_size)
    test = load_dataset(args.data, "test", args.data_dir, args.image_size)
    if args.subset:
        train = train.subset(range(min(args.subset, len(train))))
    mean, std = image_stats(train.images[:: max(1, len(train) // 10000)])
    torch.manual_seed(args.seed)
    model = build_classifier(args.arch, in_chans=train.in_chans, num_classes=train.num_classes,
                             class_names=train.class_names, image_size=train.image_size, mean=mean, std=std)
    t0 = time.time()
    losses = train_classifier(model, train.images, train.labels,
                              TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                              device=device, desc=args.arch, progress=not args.no_progress)
    seconds = time.time() - t0
    probs = predict(model, test.images, device=device)
    acc = float((probs.argmax(1) == test.labels).mean())
    per_class = {c: float((probs.argmax(1)[test.labels == i] == i).mean()) for i, c in enumerate(test.class_names)}
    model.to("cpu").save_pretrained(out, dtype=torch.float16)  # fp16 on disk, shards < 10 MiB
    metrics = {"args": vars(args), "test_accuracy": acc, "per_class_test_accuracy": per_class,
               "epoch_losses": losses, "train_seconds": seconds, "n_train": len(train)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{args.arch} (seed {args.seed}): test accuracy {acc:.4f} after {args.epochs} epochs in {seconds:.0f} s")
    print("per class:", {k: round(v, 3) for k, v in per_class.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
