#!/usr/bin/env python
"""How much do generated images look, and teach, like real ones? (issue: the sharper base)

For each model folder (a plain Stable Diffusion base, or a dacd / baseline folder) and for
real training images drawn at random (the reference), against the real test split:

- VAE reconstruction of test images: PSNR and SSIM (real images through the model's VAE);
- the evaluation classifier's accuracy on the generated images;
- KID in the evaluation classifier's feature space, per class and averaged over classes;
- precision, recall, density and coverage (k-NN balls, k=5) in the same feature space;
- classification accuracy score (CAS): a resnet10t trained on the N generated images alone
  (the downstream harness's settings: 400 steps x 128), tested on the real test split, next to
  the same for N random real training images.

    python bench/fidelity.py                                    # base and baseline of the embedded default
    python bench/fidelity.py --models runs/cand/a/base runs/cand/b/base --per-class 50 --cas-seeds 0 \
        --out runs/fidelity-candidates                          # the reduced protocol for comparing bases

Each model's images, measures and CAS cells are cached (--cache-dir) by the model's
content fingerprint and the settings, so a rerun (or an interrupted run) only does what is
missing. Writes fidelity.csv, per_class.csv and fidelity.md to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dacd.classifier import Classifier
from dacd.data import load_dataset
from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, LAYOUT
from dacd.evaluation import (draw_difficulties, draw_per_class, emit_report, kid, manifold_metrics, markdown_table,
                             measure, train_downstream_cell)
from dacd.sampling import SamplingSettings, check_guidance_shape, sample
from dacd.weights import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]

CK = EMBEDDED_CHECKPOINT
REAL = "real-random"


def shaping_label(sampling: SamplingSettings) -> str:
    """The guidance-shaping part of a model's row label ('' for plain guidance)."""
    out = ""
    if sampling.guidance_interval is not None:
        lo, hi = sampling.guidance_interval
        out += f", interval ({lo:g}, {hi:g}]"
    if sampling.guidance_rescale:
        out += f", rescale {sampling.guidance_rescale:g}"
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[str(CK / LAYOUT.base), str(CK / LAYOUT.baseline)],
                   help="SD base folders or dacd folders")
    p.add_argument("--evaluator", default=str(CK / LAYOUT.evaluator))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--per-class", type=int, default=150, help="generated (and real reference) images per class")
    p.add_argument("--real-test-per-class", type=int, default=1000, help="real test images per class for KID")
    p.add_argument("--cas-seeds", type=int, nargs="*", default=[0, 1, 2], help="none: skip CAS")
    p.add_argument("--arch", default="resnet10t")
    p.add_argument("--steps", type=int, default=400, help="CAS optimizer steps (as the downstream harness)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gen-steps", type=int, default=None, help="sampling steps (default: the project's)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[None],
                   help="text guidance scales to sweep (one row per model and scale; default: the project's)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="apply text guidance only where the noise level sigma(t) is in (LO, HI] (default: everywhere)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale phi in [0, 1] (default 0: off)")
    p.add_argument("--gen-batch-size", type=int, default=50)
    p.add_argument("--k", type=int, default=5, help="neighbours of the precision/recall balls")
    p.add_argument("--seed", type=int, default=0, help="noise seeds of the generated rows and the real draw")
    p.add_argument("--vae-test", type=int, default=2000, help="test images for the VAE reconstruction")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity"))
    p.add_argument("--cache-dir", default=None, help="images and cell results (default runs/fidelity-cache, or "
                   "<out>/cache when --out is given elsewhere)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:  # before any work, not at the first generation
        check_guidance_shape(args.guidance_interval, args.guidance_rescale)
    except ValueError as e:
        p.error(str(e).replace("guidance_interval", "--guidance-interval").replace("guidance_rescale",
                                                                                   "--guidance-rescale"))
    return args


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_generator(folder: str | Path, class_names):
    """A DifficultyControlledPipeline over a dacd folder, or over a plain SD folder (no encoder,
    no LoRA: it samples from class prompts, like the baseline)."""
    from diffusers import StableDiffusionPipeline

    from dacd.pipeline import DifficultyControlledPipeline

    folder = Path(folder)
    if (folder / LAYOUT.dacd_config).is_file():
        pipe = DifficultyControlledPipeline.from_pretrained(folder)
    elif (folder / "model_index.json").is_file():
        sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
        pipe = DifficultyControlledPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                            unet=sd.unet, scheduler=sd.scheduler, class_names=class_names)
    else:
        raise SystemExit(f"{folder} is neither a dacd folder ({LAYOUT.dacd_config}) nor a diffusers folder "
                         "(model_index.json)")
    if list(pipe.class_names) != list(class_names):
        raise SystemExit(f"{folder} knows classes {list(pipe.class_names)}, the data {list(class_names)}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_label(folder) -> str:
    """parent/name of the folder as given (made absolute, links not followed: a linked folder keeps
    the link's name, which is how two folders of one name are told apart)."""
    folder = Path(os.path.abspath(folder))
    return f"{folder.parent.name}/{folder.name}"


def _cached(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, default=float))
    tmp.replace(path)
    return value


def generate(pipe, labels, seed: int, args, cache: Path, settings: SamplingSettings) -> np.ndarray:
    """uint8 (N, C, H, W) images, one per label, cached as .npy."""
    path = cache / "images.npy"
    if path.is_file():
        return np.load(path)
    s = draw_difficulties(len(labels), DIFFICULTY.mu, DIFFICULTY.sigma, seed=seed)  # used by dacd models only
    seeds = [seed * 10**7 + i for i in range(len(labels))]
    res = sample(pipe, labels.tolist(), s.tolist(), seeds, settings,
                 chunk_size=args.gen_batch_size,
                 progress=None if args.no_progress else (lambda f, d: print(f"\r  generating {f:5.0%}", end="")))
    if not args.no_progress:
        print()
    images = np.round(np.clip(res.images.transpose(0, 3, 1, 2), 0, 1) * 255).astype(np.uint8)
    np.save(cache / "images.tmp.npy", images)
    (cache / "images.tmp.npy").replace(path)
    return images


def measures(images, labels, evaluator, real_feats, real_labels, class_names, k: int) -> tuple[dict, list]:
    m, feats = measure(evaluator, images, labels)
    per_class = []
    for c, name in enumerate(class_names):
        g, r = feats[labels == c], real_feats[real_labels == c]
        # spread of the images' mean brightness (generators here squeeze it; bench/results/base-zsnr)
        mine = np.asarray(images[labels == c], np.float64)
        brightness = mine.reshape(len(mine), -1).mean(1) / 255 if len(mine) else np.zeros(0)
        per_class.append({"class": name, "kid": kid(r, g), "accuracy": float((m.pred.to_numpy()[labels == c] == c).mean()),
                          "brightness_sd": float(brightness.std()) if len(brightness) else np.nan})
    pick = np.random.default_rng(0).permutation(len(real_feats))[:len(feats)]  # as many real rows as generated
    row = {"evaluator_accuracy": float((m.pred.to_numpy() == labels).mean()),
           "kid_class_mean": float(np.nanmean([p["kid"] for p in per_class])),
           **{k_: v for k_, v in manifold_metrics(real_feats[pick], feats, k=k).items() if k_ != "k"}}
    return row, per_class


def cas(images, labels, norm_images, test, args, cache: Path, class_names) -> list[float]:
    accs = []
    for seed in args.cas_seeds:
        r = _cached(cache / f"cas-seed{seed}.json", lambda: train_downstream_cell(
            norm_images, np.zeros(len(norm_images), int), images, labels, test.images, test.labels, arch=args.arch,
            class_names=class_names, steps=args.steps, seed=seed, batch_size=args.batch_size, lr=args.lr,
            include_real=False, progress=not args.no_progress))
        accs.append(r["accuracy"])
    return accs


def main(argv=None):
    args = parse_args(argv)
    labels = [model_label(f) for f in args.models]
    same = sorted({x for x in labels if labels.count(x) > 1})
    if same:  # checked before any work: the tables are keyed by these labels
        raise SystemExit(f"bench/fidelity.py: several --models have the table label {', '.join(same)} (the "
                         "folder's parent/name): pass folders whose parent/name differ, e.g. through a link")
    out = Path(args.out)
    default_out = Path(args.out).resolve() == (ROOT / "bench" / "results" / "fidelity").resolve()
    cache_root = Path(args.cache_dir or (ROOT / "runs" / "fidelity-cache" if default_out else out / "cache"))
    cache_root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(args.data, "train", args.data_dir)
    test = load_dataset(args.data, "test", args.data_dir)
    names = list(train.class_names)
    evaluator = Classifier.from_pretrained(args.evaluator)
    ev_id = model_fingerprint(args.evaluator)

    counts = {c: args.per_class for c in range(len(names))}
    real_pick = draw_per_class(train.labels, counts, args.seed)
    real_images, real_labels = train.images[real_pick], train.labels[real_pick]
    test_pick = draw_per_class(test.labels, {c: min(args.real_test_per_class, int((test.labels == c).sum()))
                                             for c in range(len(names))}, args.seed)
    _, test_feats = measure(evaluator, test.images[test_pick], test.labels[test_pick])
    test_labels = test.labels[test_pick]
    labels = np.repeat(np.arange(len(names)), args.per_class)
    common = {"per_class": args.per_class, "seed": args.seed, "evaluator": ev_id, "data": args.data,
              "vae_test": args.vae_test,
              "real_test_per_class": args.real_test_per_class, "k": args.k,
              "cas": {"arch": args.arch, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}}

    rows, per_class_rows = [], []
    # the reference: random real training images
    t0 = time.time()
    cache = cache_root / f"{REAL}-{_hash(common)}"
    cache.mkdir(exist_ok=True)
    row, pc = measures(real_images, real_labels, evaluator, test_feats, test_labels, names, args.k)
    accs = cas(real_images, real_labels, real_images, test, args, cache, names)
    rows.append({"model": REAL, "fingerprint": "", "vae_psnr": np.nan, "vae_ssim": np.nan, **row,
                 "cas_mean": float(np.mean(accs)) if accs else np.nan, "cas_seeds": len(accs),
                 "seconds": time.time() - t0})
    per_class_rows += [dict(p, model=REAL) for p in pc]
    print(f"{REAL}: done in {time.time() - t0:.0f} s")

    from dacd.training import vae_reconstruction_error

    for folder in args.models:
        fp = model_fingerprint(folder)
        pipe = load_generator(folder, names)
        vae = None
        for gs in args.guidance_scales:
            t0 = time.time()
            sampling = SamplingSettings(num_inference_steps=args.gen_steps, guidance_scale=gs,
                                        guidance_interval=args.guidance_interval, guidance_rescale=args.guidance_rescale)
            label = model_label(folder) + ("" if len(args.guidance_scales) == 1 and gs is None
                                           else f" @ guidance {sampling.guidance_scale:g}") + shaping_label(sampling)
            cache = cache_root / (f"{model_label(folder).replace('/', '_')}-"
                                  f"{_hash({**common, 'model': fp, 'sampling': sampling.as_config()})}")
            cache.mkdir(exist_ok=True)
            vae = vae or _cached(cache / "vae.json", lambda: vae_reconstruction_error(
                pipe.vae, torch.from_numpy(test.images[:args.vae_test])))
            images = generate(pipe, labels, args.seed, args, cache, sampling)
            row, pc = measures(images, labels, evaluator, test_feats, test_labels, names, args.k)
            accs = cas(images, labels, real_images, test, args, cache, names)
            shaping = {k: v for k, v in sampling.as_config().items() if k in ("guidance_interval", "guidance_rescale")}
            rows.append({"model": label, "guidance_scale": sampling.guidance_scale, **shaping, "fingerprint": fp,
                         "vae_psnr": vae["psnr"], "vae_ssim": vae["ssim"], **row,
                         "cas_mean": float(np.mean(accs)) if accs else np.nan, "cas_seeds": len(accs),
                         "seconds": time.time() - t0})
            per_class_rows += [dict(p, model=label) for p in pc]
            print(f"{label}: done in {time.time() - t0:.0f} s")

    table = pd.DataFrame(rows)
    per_class = pd.DataFrame(per_class_rows)
    if len(args.cas_seeds):
        table["cas_gap_to_real"] = table.cas_mean - table.loc[table.model == REAL, "cas_mean"].iloc[0]
    table.to_csv(out / "fidelity.csv", index=False)
    per_class.to_csv(out / "per_class.csv", index=False)
    show = table.drop(columns=["fingerprint", "seconds"])
    kid_wide = per_class.pivot(index="class", columns="model", values="kid").loc[names]
    text = (f"N = {args.per_class} per class ({args.per_class * len(names)} images); CAS seeds {args.cas_seeds}; "
            f"KID and manifold metrics in the evaluator's feature space against real test images.\n\n"
            + markdown_table(show) + "\n\nKID per class:\n\n" + markdown_table(kid_wide, index=True)
            + "\n\nSpread (sd) of the images' mean brightness per class (real-random: the real images' own):\n\n"
            + markdown_table(per_class.pivot(index="class", columns="model", values="brightness_sd").loc[names],
                             index=True) + "\n")
    emit_report(text, out, "fidelity.md")
    return table


if __name__ == "__main__":
    main()
