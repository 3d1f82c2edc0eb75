#!/usr/bin/env python
"""Decoupled training of a difficulty-controlled SD: LoRA (domain) + difficulty encoder.

    python train/train_dacd.py                                   # embedded default -> checkpoints/fashion-mnist/dacd
    python train/train_dacd.py --no-difficulty --output-dir checkpoints/fashion-mnist/baseline
    python train/train_dacd.py --base runwayml/stable-diffusion-v1-5 --data my_imagefolder \
        --scores my_scores.parquet --resolution 512 --mixed-precision bf16 --output-dir out/dacd
    accelerate launch train/train_dacd.py ...                    # several GPUs / machines

The base is frozen; state goes to --run-dir; rerun with the same arguments (the default
`--resume-from-checkpoint latest`) to continue after an interruption.
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

from dacd.data import load_dataset, resolve_class
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT, repo_relative
from dacd.training import (
    DacdTrainConfig,
    TrainingData,
    confuser_caption_lists,
    confuser_classes,
    confuser_prompt,
    make_accelerator,
    train_dacd,
)

D = DacdTrainConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(EMBEDDED_CHECKPOINT / LAYOUT.base), help="SD folder or hub id")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--scores", default=str(EMBEDDED_CHECKPOINT / LAYOUT.scores),
                   help="score table with columns id, s (and region) from train/score_difficulty.py")
    p.add_argument("--resolution", type=int, default=32, help="ImageFolder resolution (SD 1.5: 512)")
    p.add_argument("--output-dir", default=str(EMBEDDED_CHECKPOINT / LAYOUT.dacd))
    p.add_argument("--run-dir", default=None, help="training state (default runs/<output-dir name>)")
    p.add_argument("--no-difficulty", action="store_true", help="baseline: LoRA only, everything else identical")
    p.add_argument("--exclude-regions", nargs="*", default=[], help="drop images in these data-map regions, "
                   "e.g. hard-to-learn (where mislabelled images gather)")
    p.add_argument("--classes", nargs="*", default=None, help="train on these classes only (names or ids)")
    p.add_argument("--subset", type=int, default=None, help="first N training images")
    p.add_argument("--max_train_steps", "--max-train-steps", type=int, default=D.max_train_steps)
    p.add_argument("--train_batch_size", "--batch-size", type=int, default=D.batch_size)
    p.add_argument("--rank", type=int, default=D.lora_rank)
    p.add_argument("--alpha", type=float, default=D.lora_alpha)
    p.add_argument("--lora-targets", nargs="+", default=list(D.lora_targets))
    p.add_argument("--learning_rate", "--lr", type=float, default=D.lr)
    p.add_argument("--encoder-lr", type=float, default=D.encoder_lr)
    p.add_argument("--lr-warmup-steps", type=int, default=D.warmup_steps)
    p.add_argument("--text-dropout", type=float, default=D.text_dropout)
    p.add_argument("--difficulty-dropout", type=float, default=D.difficulty_dropout)
    p.add_argument("--balance-power", type=float, default=D.balance_power,
                   help="difficulty-balanced sampling: 0 uniform, 1 flat over s bins")
    p.add_argument("--balance-per-class", action="store_true",
                   help="balance s within each class (each class keeps its share of draws) instead of over all "
                        "images, where classes with few hard images are drawn less and their hard images rarely "
                        "(on the v chain it did not steady the dial: bench/results/controllability-classbalance)")
    p.add_argument("--num-tokens", type=int, default=D.num_tokens)
    p.add_argument("--ema-decay", type=float, default=D.ema_decay,
                   help="save an exponential moving average of the LoRA and encoder weights (e.g. 0.999; "
                        "0: the last step's weights); kept in each checkpoint, so it resumes exactly")
    p.add_argument("--s-embedding", default=D.s_embedding, choices=["fourier", "linear"])
    p.add_argument("--confuser-prompts", action="store_true",
                   help="condition each image on the class it is most easily taken for, through its prompt "
                        "('a photo of a Shirt like a T-shirt/top'); writes confuser_prompts.json beside the "
                        "weights for train/generate.py --prompts")
    p.add_argument("--confuser-classifier", default=str(EMBEDDED_CHECKPOINT / LAYOUT.classifier),
                   help="with --confuser-prompts: the classifier whose second choice names the confuser of an "
                        "image its out-of-fold prediction gets right (the scoring classifier)")
    p.add_argument("--checkpointing_steps", "--checkpointing-steps", type=int, default=D.checkpointing_steps)
    p.add_argument("--resume_from_checkpoint", "--resume", default="latest",
                   help="'latest', a checkpoint folder, or 'none' to start over")
    p.add_argument("--mixed_precision", "--mixed-precision", default=D.mixed_precision, choices=["no", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--save-fp16", action="store_true", help="store LoRA and encoder weights in fp16")
    p.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_training_data(args):
    from dacd.difficulty import load_scores  # pandas: kept off --help

    ds = load_dataset(args.data, "train", args.data_dir, args.resolution)
    if args.subset:
        ds = ds.subset(range(min(args.subset, len(ds))))
    table = load_scores(args.scores).set_index("id")
    missing = [i for i in ds.ids[:1000] if i not in table.index]
    if missing:
        raise SystemExit(f"{args.scores} has no score for {len(missing)}+ images (e.g. {missing[0]!r}): "
                         "score this dataset with train/score_difficulty.py first")
    rows = table.loc[list(ds.ids)]
    keep = np.ones(len(ds), bool)
    if args.exclude_regions:
        keep &= ~rows["region"].isin(args.exclude_regions).to_numpy()
    if args.classes:
        wanted = [resolve_class(c if not str(c).isdigit() else int(c), ds.class_names) for c in args.classes]
        keep &= np.isin(ds.labels, wanted)
    idx = np.flatnonzero(keep)
    s = rows["s"].to_numpy(np.float32)[idx]
    if np.isnan(s).any():
        raise SystemExit(f"{args.scores} has NaN scores; rerun train/score_difficulty.py")
    data = TrainingData(images=torch.from_numpy(ds.images[idx]), labels=ds.labels[idx], s=s,
                        class_names=list(ds.class_names), ids=list(ds.ids[idx]))
    if args.confuser_prompts:
        data.confusers = training_confusers(args, data, rows["pred"].to_numpy()[idx] if "pred" in rows else None)
    return data, len(ds) - len(idx)


def training_confusers(args, data: TrainingData, oof_pred) -> np.ndarray:
    """Each training image's confuser (dacd.training.confuser_classes): the scoring table's wrong
    out-of-fold prediction, else --confuser-classifier's most probable other class."""
    from dacd.classifier import Classifier, predict

    folder = Path(args.confuser_classifier)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--confuser-classifier {folder} is not a classifier folder (no config.json): pass the "
                         "scoring classifier (train/score_difficulty.py writes it)")
    model = Classifier.from_pretrained(folder)
    if list(model.config.class_names or []) not in ([], list(data.class_names)):
        raise SystemExit(f"--confuser-classifier {folder} knows classes {model.config.class_names}, the data "
                         f"{list(data.class_names)}")
    probs = predict(model, data.images, progress=not args.no_progress, desc="confusers")
    return confuser_classes(probs, data.labels, oof_pred)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import StableDiffusionPipeline  # diffusers and the pipeline: kept off --help

    from dacd.pipeline import DifficultyControlledPipeline

    accelerator = make_accelerator(args.mixed_precision)
    data, dropped = load_training_data(args)
    cfg = DacdTrainConfig(
        max_train_steps=args.max_train_steps, batch_size=args.train_batch_size, lora_rank=args.rank,
        lora_alpha=args.alpha, lora_targets=tuple(args.lora_targets), lr=args.learning_rate,
        encoder_lr=args.encoder_lr, warmup_steps=args.lr_warmup_steps, text_dropout=args.text_dropout,
        difficulty_dropout=args.difficulty_dropout, balance_power=args.balance_power,
        balance_per_class=args.balance_per_class, num_tokens=args.num_tokens,
        s_embedding=args.s_embedding, no_difficulty=args.no_difficulty, ema_decay=args.ema_decay,
        checkpointing_steps=args.checkpointing_steps,
        seed=args.seed, mixed_precision=args.mixed_precision)
    out = Path(args.output_dir)
    run_dir = Path(args.run_dir or f"runs/{out.name}")
    sd = StableDiffusionPipeline.from_pretrained(args.base, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe = DifficultyControlledPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                        unet=sd.unet, scheduler=sd.scheduler, class_names=data.class_names)
    if data.confusers is not None:
        data.prompts = [confuser_prompt(pipe.prompt_template, data.class_names, int(c), int(k))
                        for c, k in zip(data.labels, data.confusers)]
    if accelerator.is_main_process:
        print(f"training {'baseline (no difficulty)' if cfg.no_difficulty else 'dacd'} on {len(data.labels)} images "
              f"({dropped} excluded), {accelerator.num_processes} process(es) on {accelerator.device}")
    resume = None if args.resume_from_checkpoint == "none" else args.resume_from_checkpoint
    t0 = time.time()
    result = train_dacd(pipe, data, cfg, run_dir, accelerator=accelerator, resume=resume,
                        progress=not args.no_progress, stop_at=args.stop_at)
    if not result["finished"]:
        print(f"stopped at step {result['steps']}; rerun to continue")
        return 3
    if accelerator.is_main_process:
        pipe.to("cpu", torch.float32)
        if args.save_fp16 and pipe.difficulty_encoder is not None:
            pipe.difficulty_encoder.to(torch.float16)
        pipe.dacd_config = {"train_config": json.loads(json.dumps(asdict(cfg), default=list)),
                            "scores": repo_relative(args.scores), "excluded_images": dropped,
                            "confuser_prompts": data.confusers is not None}
        pipe.save_pretrained(out, base=args.base)
        if data.confusers is not None:
            lists = confuser_caption_lists(pipe.prompt_template, data.class_names, data.labels, data.confusers, data.s)
            (out / LAYOUT.confuser_prompts).write_text(json.dumps(lists, indent=1))
        shutil.copy(run_dir / "loss.csv", out / "loss.csv")
        mem = result["peak_cuda_memory_gib"]
        print(f"final loss {result['final_loss']:.4f}; {result['images_per_second']:.1f} images/s; median step "
              f"{result['median_step_seconds']:.3f} s" + (f"; peak CUDA memory {mem:.2f} GiB" if mem else "")
              + f"; wrote {out} in {time.time() - t0:.0f} s")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
