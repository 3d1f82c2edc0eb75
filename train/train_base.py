#!/usr/bin/env python
"""Train the tiny Stable-Diffusion-architecture base model of the embedded default.

    python train/train_base.py                                    # Fashion-MNIST, defaults (~45 min, 2 cores)
    python train/train_base.py --vae-steps 20 --unet-steps 20 --subset 512 --output-dir /tmp/base

Stages (each resumable; rerun the same command after an interruption):
  1. VAE (MSE + light KL); then `scaling_factor` = 1 / std of its latents;
  2. U-Net + CLIP text encoder jointly on class prompts ("a photo of a {class}"), EMA;
  3. write a regular StableDiffusionPipeline folder (+ loss curves, metrics.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dacd.data import load_dataset
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT, PROMPT_TEMPLATE
from dacd.tiny import TinySDConfig, build_components, save_sd_folder
from dacd.training import (BaseTrainConfig, latent_std, make_encoder_deterministic, train_base_unet, train_vae,
                           vae_reconstruction_error)


def parse_args(argv=None):
    b, t = BaseTrainConfig(), TinySDConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output-dir", default=str(EMBEDDED_CHECKPOINT / LAYOUT.base))
    p.add_argument("--run-dir", default="runs/base", help="resumable training state")
    p.add_argument("--subset", type=int, default=None, help="first N training images")
    p.add_argument("--vae-steps", type=int, default=b.vae_steps)
    p.add_argument("--vae-batch-size", type=int, default=b.vae_batch_size)
    p.add_argument("--kl-weight", type=float, default=b.kl_weight,
                   help="weight of the VAE's KL term beside its MSE (larger: smoother, more Gaussian latents, "
                        "blurrier reconstructions)")
    p.add_argument("--unet-steps", type=int, default=b.unet_steps)
    p.add_argument("--unet-batch-size", type=int, default=b.unet_batch_size)
    p.add_argument("--unet-lr", type=float, default=b.unet_lr)
    p.add_argument("--checkpointing-steps", type=int, default=b.checkpointing_steps)
    p.add_argument("--prediction-type", default=t.prediction_type, choices=["epsilon", "v_prediction"],
                   help="v_prediction builds an SD2-shaped base (linear projections)")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="rescale the noise schedule to zero SNR at its last step and sample with trailing "
                        "timesteps (needs --prediction-type v_prediction; pair it with --snr-gamma 0: min-SNR "
                        "weights of v targets vanish at zero SNR)")
    p.add_argument("--deterministic-encoder", action="store_true",
                   help="after the VAE stage, make its posterior deterministic (log-variance at the floor): the "
                        "U-Net, the LoRAs and the scaling factor then see the posterior means, not noisy samples")
    p.add_argument("--unet-channels", type=int, nargs="+", default=list(t.unet_channels))
    p.add_argument("--unet-top-attention", action=argparse.BooleanOptionalAction, default=t.unet_top_attention,
                   help="cross-attention in the first U-Net block too (off: plain convolutions there, attention "
                        "from the second level down; a 2-level U-Net needs it on)")
    p.add_argument("--unet-layers-per-block", type=int, default=t.unet_layers_per_block)
    p.add_argument("--vae-channels", type=int, nargs="+", default=list(t.vae_channels),
                   help="one entry per VAE block; k blocks downsample 2^(k-1) times (32 px: 3 -> 8x8 latents, "
                        "2 -> 16x16)")
    p.add_argument("--latent-channels", type=int, default=t.latent_channels)
    p.add_argument("--snr-gamma", type=float, default=b.snr_gamma,
                   help="min-SNR-gamma loss weighting of the U-Net; 0: plain MSE")
    p.add_argument("--ema-decay", type=float, default=b.ema_decay)
    p.add_argument("--seed", type=int, default=b.seed)
    p.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    p.add_argument("--eval-samples", type=int, default=100, help="samples per class for the accuracy check (0: skip)")
    p.add_argument("--eval-classifier", default=str(EMBEDDED_CHECKPOINT / LAYOUT.classifier))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_run_shape(run: Path, tiny: TinySDConfig) -> None:
    """A run folder remembers the model settings it was started with; resuming it with others (another
    shape, prediction type or noise schedule) would silently mix two models, so it is refused."""
    path = run / "tiny_sd_config.json"
    now = json.loads(json.dumps(asdict(tiny)))  # tuples as lists, as stored
    if not path.exists():
        path.write_text(json.dumps(now, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    default = json.loads(json.dumps(asdict(TinySDConfig())))  # what a folder from before a setting existed ran with
    differ = {k: (saved.get(k, default[k]), v) for k, v in now.items() if saved.get(k, default[k]) != v}
    if differ:
        said = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
        raise SystemExit(f"train_base.py: {run} was started with other model settings ({said}): pass the same "
                         "flags to resume it, or give a new --run-dir")


def main(argv=None):
    args = parse_args(argv)
    t_all = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = load_dataset(args.data, "train", args.data_dir)
    if args.subset:
        train = train.subset(range(min(args.subset, len(train))))
    images = torch.from_numpy(train.images)
    cfg = BaseTrainConfig(vae_steps=args.vae_steps, vae_batch_size=args.vae_batch_size, unet_steps=args.unet_steps,
                          unet_batch_size=args.unet_batch_size, unet_lr=args.unet_lr,
                          checkpointing_steps=args.checkpointing_steps, seed=args.seed, snr_gamma=args.snr_gamma,
                          ema_decay=args.ema_decay, kl_weight=args.kl_weight)
    tiny = TinySDConfig(image_size=train.image_size, in_channels=train.in_chans,
                        unet_channels=tuple(args.unet_channels), unet_layers_per_block=args.unet_layers_per_block,
                        unet_top_attention=args.unet_top_attention, vae_channels=tuple(args.vae_channels),
                        latent_channels=args.latent_channels,
                        prediction_type=args.prediction_type, zero_terminal_snr=args.zero_terminal_snr,
                        deterministic_encoder=args.deterministic_encoder)
    if tiny.zero_terminal_snr and cfg.snr_gamma:
        print(f"warning: --zero-terminal-snr with min-SNR weighting (--snr-gamma {cfg.snr_gamma:g}) gives the last "
              "noise levels almost no weight and the last one none; --snr-gamma 0 trains them")
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    check_run_shape(run, tiny)
    parts = build_components(tiny, class_names=train.class_names, seed=args.seed)
    progress = not args.no_progress
    metrics = {"tiny_config": asdict(tiny), "train_config": asdict(cfg), "n_train": len(train)}
    stage_times = json.loads((run / "stage_seconds.json").read_text()) if (run / "stage_seconds.json").exists() else {}

    # 1. VAE
    vae_dir = run / "vae_final"
    if (vae_dir / "config.json").exists():
        from diffusers import AutoencoderKL  # diffusers: kept off --help

        parts["vae"] = AutoencoderKL.from_pretrained(vae_dir)
        print(f"VAE stage already done ({vae_dir})")
    else:
        t0 = time.time()
        r = train_vae(parts["vae"], images, cfg, run / "vae", device=device, progress=progress, stop_at=args.stop_at)
        stage_times["vae"] = stage_times.get("vae", 0) + r["seconds_this_run"]
        (run / "stage_seconds.json").write_text(json.dumps(stage_times))
        if not r["finished"]:
            print(f"stopped at VAE step {r['steps']}; rerun to continue")
            return 3
        parts["vae"].to("cpu")
        sf = 1.0 / latent_std(parts["vae"], images)
        parts["vae"].register_to_config(scaling_factor=sf)
        parts["vae"].save_pretrained(vae_dir)
        print(f"VAE trained in {time.time() - t0:.0f} s; scaling_factor {sf:.4f}")
    if tiny.deterministic_encoder:  # on the trained (or reused) VAE; its decoder and means are unchanged
        parts["vae"].to("cpu")
        make_encoder_deterministic(parts["vae"])
        sf = 1.0 / latent_std(parts["vae"], images)
        parts["vae"].register_to_config(scaling_factor=sf)
        print(f"VAE encoder made deterministic; scaling_factor of the posterior means {sf:.4f}")
    held = torch.from_numpy(load_dataset(args.data, "test", args.data_dir).images[:2000]) if args.data else images
    metrics["vae_reconstruction_test"] = vae_reconstruction_error(parts["vae"].to(device), held)
    metrics["vae_scaling_factor"] = float(parts["vae"].config.scaling_factor)
    print("VAE reconstruction on test images:", {k: round(v, 5) for k, v in metrics["vae_reconstruction_test"].items()})

    # 2. U-Net + text encoder
    prompts = [PROMPT_TEMPLATE.format(c) for c in train.class_names]
    r = train_base_unet(parts, images, train.labels, prompts, cfg, run / "unet", device=device, progress=progress,
                        stop_at=args.stop_at)
    stage_times["unet"] = stage_times.get("unet", 0) + r["seconds_this_run"]
    (run / "stage_seconds.json").write_text(json.dumps(stage_times))
    if not r["finished"]:
        print(f"stopped at U-Net step {r['steps']}; rerun to continue")
        return 3

    # 3. the folder
    for k in ("vae", "unet", "text_encoder"):
        parts[k].to("cpu")
    out = Path(args.output_dir)
    save_sd_folder(out, parts, tiny)
    shutil.copy(run / "vae" / "loss.csv", out / "loss_vae.csv")
    shutil.copy(run / "unet" / "loss.csv", out / "loss_unet.csv")
    metrics["stage_seconds"] = stage_times
    if args.eval_samples and Path(args.eval_classifier).is_dir():
        metrics["sample_accuracy"] = evaluate_base(out, args.eval_classifier, args.eval_samples, train.class_names)
        print(f"classifier accuracy on base samples: {metrics['sample_accuracy']['overall']:.3f}",
              {k: round(v, 3) for k, v in metrics["sample_accuracy"]["per_class"].items()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out} in {time.time() - t_all:.0f} s")
    return 0


def evaluate_base(folder, classifier_dir, per_class: int, class_names, steps: int = 25, guidance: float = 3.0):
    """Sample `per_class` images per class prompt and classify them."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline  # diffusers and timm: kept off --help

    from dacd.classifier import Classifier, predict

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    clf = Classifier.from_pretrained(classifier_dir)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    correct = {}
    for c, name in enumerate(class_names):
        imgs = []
        for start in range(0, per_class, 50):
            n = min(50, per_class - start)
            g = torch.Generator().manual_seed(1000 * c + start)
            out = pipe([PROMPT_TEMPLATE.format(name)] * n, height=size, width=size, num_inference_steps=steps,
                       guidance_scale=guidance, generator=g, output_type="np").images
            imgs.append(out)
        x = np.concatenate(imgs).transpose(0, 3, 1, 2)
        p = predict(clf, torch.from_numpy(x))
        correct[name] = float((p.argmax(1) == c).mean())
    return {"overall": float(np.mean(list(correct.values()))), "per_class": correct, "steps": steps,
            "guidance_scale": guidance, "classifier": str(classifier_dir), "samples_per_class": per_class}


if __name__ == "__main__":
    sys.exit(main())
