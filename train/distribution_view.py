#!/usr/bin/env python
"""Precompute the app's default Distributions view for a checkpoint folder, so the tab shows it
at once instead of generating for half a minute on first use.

    python train/distribution_view.py                          # the embedded checkpoint
    python train/distribution_view.py --checkpoint my/checkpoint

The view is the checkpoint's own default plan, s ~ N(0.5, 0.1) over all classes, N = 200, seed 0,
at the app's default sampling: what dacd, the baseline and real test images measure with the
evaluation classifier. It is written as distribution_view.json beside the models with the
fingerprint of the models, evaluator, score table and settings it came from; the app ignores
(and logs) a file whose fingerprint does not match. A stage of `make checkpoints` (last).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm.auto import tqdm

from dacd.defaults import LAYOUT, default_checkpoint
from dacd.explore import DEFAULT_VIEW, Workbench


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(default_checkpoint()))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (the real curve needs the test split)")
    p.add_argument("--force", action="store_true", help="recompute even when the stored view is up to date")
    args = p.parse_args(argv)
    ex = Workbench(args.checkpoint, data_dir=args.data_dir)
    if not args.force and ex.default_distribution() is not None:
        print(f"{ex.checkpoint / LAYOUT.distribution_view} is up to date (its fingerprint matches the models)")
        return 0
    t0 = time.perf_counter()
    bar = tqdm(total=100, desc="distribution view", unit="%")

    def progress(fraction, desc):
        bar.set_description(desc)
        bar.n = round(100 * fraction)
        bar.refresh()

    with torch.inference_mode():
        path = ex.save_default_distribution(progress=progress)
    bar.close()
    print(f"wrote {path} ({DEFAULT_VIEW}) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
