#!/usr/bin/env python
"""What each latent channel of a base's VAE carries: signal, posterior noise, or nothing.

For N training images of one class (or all), in the scaled latent units the U-Net sees
(x scaling_factor): per channel, the spread (sd) of the posterior means over images and positions,
the mean posterior std, and the reconstruction PSNR (of the mean squared error, as
`dacd.training.vae_reconstruction_error`) when that channel is replaced by its mean over the batch.
A channel whose replacement costs nothing carries no signal; where its posterior std is about its
spread, a U-Net trained on posterior samples has to model noise there (`train/train_base.py
--deterministic-encoder` trains on the means instead).

    python bench/vae_latents.py --base checkpoints/fashion-mnist/base --class Bag --n 200
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import torch

from dacd.data import load_dataset, resolve_class
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT
from dacd.evaluation import emit_report, markdown_table
from dacd.training import images_to_model_range


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(EMBEDDED_CHECKPOINT / LAYOUT.base), help="SD folder with a vae/ subfolder")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--class", dest="class_name", default=None, help="one class (name or id); default: all")
    p.add_argument("--n", type=int, default=200, help="the first N training images of the class")
    p.add_argument("--out", default=None, help="also write vae_latents.md here")
    return p.parse_args(argv)


def psnr(reconstruction: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in [0, 1] pixel units of model-range tensors (of the mean squared error over all pixels)."""
    mse = float(((reconstruction.clamp(-1, 1) - x) / 2).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.no_grad()
def channel_report(vae, images: torch.Tensor) -> tuple[pd.DataFrame, float]:
    """Per-channel table and the PSNR with every channel kept (see the module docstring)."""
    x = images_to_model_range(images)
    post = vae.encode(x).latent_dist
    sf = float(vae.config.scaling_factor)
    full = psnr(vae.decode(post.mean).sample, x)
    rows = []
    for c in range(post.mean.shape[1]):
        z = post.mean.clone()
        z[:, c] = post.mean[:, c].mean()
        rows.append({"channel": c, "spread of means": float(post.mean[:, c].std()) * sf,
                     "posterior std": float(post.std[:, c].mean()) * sf,
                     "PSNR without it (dB)": psnr(vae.decode(z).sample, x)})
    table = pd.DataFrame(rows)
    table["PSNR lost (dB)"] = full - table["PSNR without it (dB)"]
    return table, full


def main(argv=None):
    args = parse_args(argv)
    from diffusers import AutoencoderKL  # kept off --help

    train = load_dataset(args.data, "train", args.data_dir)
    which = np.arange(len(train))
    if args.class_name is not None:
        c = resolve_class(int(args.class_name) if args.class_name.isdigit() else args.class_name, train.class_names)
        which = which[np.asarray(train.labels) == c]
    if args.n < 1 or not len(which):
        raise SystemExit("bench/vae_latents.py: no images to encode (check --class and --n)")
    images = torch.from_numpy(train.images[which[:args.n]])
    vae = AutoencoderKL.from_pretrained(args.base, subfolder="vae").eval()
    table, full = channel_report(vae, images)
    what = "all classes" if args.class_name is None else train.class_names[c]
    text = (f"{args.base}: {len(images)} training images ({what}); scaled latents (scaling factor "
            f"{vae.config.scaling_factor:.4f}); PSNR with every channel {full:.2f} dB\n\n"
            + markdown_table(table) + "\n")
    emit_report(text, args.out, "vae_latents.md")
    return table


if __name__ == "__main__":
    main()
