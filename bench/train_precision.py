#!/usr/bin/env python
"""What bf16 autocast or the channels-last memory format buys a training step on this machine: the
base U-Net step (U-Net + text encoder, forward, backward, AdamW, as train/train_base.py runs it) in
float32, in float32 with channels-last tensors, and under `torch.autocast("cpu", torch.bfloat16)`,
and how far each variant's loss and gradients land from plain float32's.

    python bench/train_precision.py                 # the shipped base's shapes, batch 128
    python bench/train_precision.py --batch-size 64 --steps 10 --threads 2

Prints seconds per step for each variant and its ratio to float32 (the figure to compare across
machines; a CPU without bf16 instructions emulates it and is slower). Weights are the shipped
base's; inputs are random latents and class prompts, so nothing is trained or written.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT


VARIANTS = {"float32": (torch.float32, torch.contiguous_format),
            "channels-last": (torch.float32, torch.channels_last),
            "bf16 autocast": (torch.bfloat16, torch.contiguous_format)}


def step_fn(unet, text_encoder, ids, batch_size: int, dtype, memory_format=torch.contiguous_format):
    cfg = unet.config
    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    noise = torch.randn(lat.shape, generator=gen)
    unet.to(memory_format=memory_format)
    lat, noise = lat.contiguous(memory_format=memory_format), noise.contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch_size,), generator=gen)
    rows = torch.randint(0, len(ids), (batch_size,), generator=gen)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(update: bool = True) -> tuple[float, torch.Tensor | None]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
            ctx = text_encoder(ids[rows])[0]
            pred = unet(lat + noise, t, encoder_hidden_states=ctx).sample
            loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not update:  # the shipped weights' gradient, to compare the precisions at the same point
            return loss.item(), torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item(), None

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(EMBEDDED_CHECKPOINT / LAYOUT.base))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8,
                   help="timed steps per precision (after a gradient at the shipped weights and one warm-up step)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = CLIPTokenizer.from_pretrained(args.base, subfolder="tokenizer")
    ids = tokenizer([f"a photo of a class {i}" for i in range(10)], padding="max_length",
                    max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    results = {}
    for name, (dtype, memory_format) in VARIANTS.items():
        unet = UNet2DConditionModel.from_pretrained(args.base, subfolder="unet").train()
        text_encoder = CLIPTextModel.from_pretrained(args.base, subfolder="text_encoder").train()
        step = step_fn(unet, text_encoder, ids, args.batch_size, dtype, memory_format)
        loss, grad = step(update=False)
        step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        results[name] = {"seconds": (time.perf_counter() - t0) / args.steps, "loss": loss, "grad": grad}
    ref = results["float32"]
    print(f"base U-Net + text encoder training step, batch {args.batch_size}, {torch.get_num_threads()} threads:")
    for name, r in results.items():
        print(f"  {name:<14} {r['seconds']:.3f} s/step  (loss at the shipped weights {r['loss']:.5f})")
    for name, r in results.items():
        if name != "float32":
            cos = float(F.cosine_similarity(ref["grad"].double(), r["grad"].double(), dim=0))
            print(f"  {name} / float32 time: {r['seconds'] / ref['seconds']:.2f}; loss difference "
                  f"{abs(r['loss'] - ref['loss']):.2e}; gradient cosine {cos:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
