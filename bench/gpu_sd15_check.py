#!/usr/bin/env python
"""GPU check: an SD-1.5-shaped pipeline from hand-written configs (random weights, no
download), N steps of train/train_dacd.py at 512 px in bf16, then one 25-step generation.
Prints step time and peak memory.

    python bench/gpu_sd15_check.py --out /tmp/sd15check              # on a GPU machine
    python bench/gpu_sd15_check.py --resolution 64 --steps 2 --gen-steps 2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from dacd.pipeline import DifficultyControlledPipeline
from dacd.tiny import build_tokenizer, save_sd_folder

ROOT = Path(__file__).resolve().parents[1]


def build_sd15(folder: Path, resolution: int):

    torch.manual_seed(0)
    tokenizer = build_tokenizer(["cat", "dog"])
    unet = UNet2DConditionModel(  # SD 1.5's U-Net config
        sample_size=resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(  # SD's VAE config
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=resolution, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower: width 768, 12 layers
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=768, hidden_act="quick_gelu"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    save_sd_folder(folder, dict(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched))
    return sum(p.numel() for p in unet.parameters())


def write_data(root: Path, resolution: int, n_per_class: int = 16):

    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(["cat", "dog"]):
        d = root / "train" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(d / f"{i}.png")
            rows.append({"id": f"train:{name}/{i}.png", "label": c, "s": float(rng.random()), "region": "easy-to-learn"})
    pd.DataFrame(rows).to_parquet(root / "scores.parquet")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/sd15check")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--mixed-precision", default="bf16")
    args = p.parse_args()

    out = Path(args.out)
    t0 = time.time()
    n_params = build_sd15(out / "base", args.resolution)
    write_data(out / "data", args.resolution)
    print(f"built SD-1.5-shaped base (U-Net {n_params / 1e6:.0f}M params) in {time.time() - t0:.0f} s", flush=True)
    mp = args.mixed_precision if torch.cuda.is_available() else "no"
    cmd = [sys.executable, str(ROOT / "train/train_dacd.py"), "--base", str(out / "base"), "--data", str(out / "data"),
           "--scores", str(out / "data/scores.parquet"), "--resolution", str(args.resolution),
           "--max-train-steps", str(args.steps), "--batch-size", str(args.batch_size), "--checkpointing-steps",
           str(args.steps), "--mixed-precision", mp, "--output-dir", str(out / "dacd"), "--run-dir",
           str(out / "run"), "--no-progress"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-3000:])
    if proc.returncode:
        print(proc.stderr[-5000:])
        sys.exit(proc.returncode)
    print(f"train_dacd.py: {args.steps} steps in {time.time() - t0:.0f} s (incl. start-up)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = DifficultyControlledPipeline.from_pretrained(out / "dacd", dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        pipe([0], [0.5], num_inference_steps=2, output_type="np")  # warm-up
        torch.cuda.synchronize()
    t0 = time.time()
    res = pipe([0, 1, 0, 1], [0.1, 0.4, 0.7, 0.9], num_inference_steps=args.gen_steps, scheduler="ddim",
               guidance_scale=3.0, difficulty_guidance_scale=5.0, output_type="np")
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "resolution": args.resolution,
              "generation_images": 4, "generation_steps": args.gen_steps, "generation_seconds": round(dt, 3),
              "three_branch": True, "images_shape": list(res.images.shape),
              "generation_peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
