#!/usr/bin/env python
"""Image grids for the model card (fixed seeds).

    python bench/grids.py base       # rows: classes, 8 samples each, from the base SD
    python bench/grids.py sweep      # rows: classes, columns: requested s 0.05 ... 0.95 (same noise per row)
    python bench/grids.py sweep --calibrated   # the same through the calibration curve
    python bench/grids.py real       # rows: classes, columns: real images at the same s
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from dacd.data import FASHION_MNIST_CLASSES
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT, PROMPT_TEMPLATE
from dacd.explore import Explorer
from dacd.pipeline import DifficultyControlledPipeline
from dacd.plots import image_grid
from dacd.sampling import SamplingSettings, sample

ROOT = Path(__file__).resolve().parents[1]
CK = EMBEDDED_CHECKPOINT


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["base", "sweep", "real"])
    p.add_argument("--checkpoint", default=str(CK))
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty-only", action="store_true")
    p.add_argument("--calibrated", action="store_true", help="sweep: condition through the shipped calibration curve")
    args = p.parse_args(argv)
    ck = Path(args.checkpoint)
    cols = np.round(np.linspace(0.05, 0.95, 8), 3)
    images = []
    if args.what == "base":
        pipe = StableDiffusionPipeline.from_pretrained(ck / LAYOUT.base, safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        for c, name in enumerate(FASHION_MNIST_CLASSES):
            out = pipe([PROMPT_TEMPLATE.format(name)] * 8, height=32, width=32, num_inference_steps=25,
                       guidance_scale=3.0, output_type="np",
                       generator=torch.Generator().manual_seed(args.seed + c)).images
            images += list(out)
    elif args.what == "sweep":
        pipe = DifficultyControlledPipeline.from_pretrained(ck / LAYOUT.dacd)
        pipe.set_progress_bar_config(disable=True)
        for c in range(pipe.num_classes):  # one row per class, the noise fixed along it
            out = sample(pipe, [c] * len(cols), list(cols), [args.seed + c] * len(cols),
                         SamplingSettings(calibrated=args.calibrated), chunk_size=len(cols),
                         difficulty_only=args.difficulty_only)
            images += list(out.images)
    else:
        ex = Explorer(ck)
        for c in range(len(ex.class_names)):
            images += [im for im, _ in ex.real_at_difficulty(c, cols)]
    suffix = ("_difficulty_only" if args.difficulty_only else "") + ("_calibrated" if args.calibrated else "")
    out = Path(args.out or CK / f"grid_{args.what}{suffix}.png")
    image_grid(images, ncols=8, scale=3).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
