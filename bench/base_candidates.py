#!/usr/bin/env python
"""Compare candidate base generators on a reduced protocol before rebuilding the chain on one.

Each candidate is `train/train_base.py` with its own flags and the same reduced step counts;
then `bench/fidelity.py` measures all of them (VAE PSNR/SSIM, KID, precision/recall, CAS) against
random real images. Both steps resume: rerun the same command after an interruption.

    python bench/base_candidates.py                          # every candidate, reduced protocol
    python bench/base_candidates.py --only today lat16       # some of them
    python bench/base_candidates.py --vae-steps 1200 --unet-steps 2500 --only lat16   # a full-length run

Writes runs/base-candidates/v<vae steps>-u<unet steps>/<name>/{base,run} and the comparison to --out (fidelity.csv,
fidelity.md, candidates.csv with each candidate's flags, parameters and stage seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

# name -> train_base.py flags; "today" is the first shipped base's shape (4x8x8 latents, plain MSE);
# "lat16-fast" won and is train_base.py's default (the shipped base) since the rebuild
FIRST = ["--vae-channels", "32", "64", "64", "--unet-channels", "64", "128", "--unet-top-attention", "--snr-gamma", "0"]
LAT16 = ["--vae-channels", "32", "64", "--unet-channels", "32", "64", "128", "--unet-top-attention"]
CANDIDATES = {
    "today": FIRST,
    "lat8c8": [*FIRST, "--latent-channels", "8"],  # twice the latent size, same U-Net cost
    "lat16": [*LAT16, "--snr-gamma", "0"],  # 4x16x16 latents
    "lat16-minsnr": [*LAT16, "--snr-gamma", "5"],
    # 16x16 latents, cheaper and faster to converge: no self-attention over 16x16, min-SNR 5
    "lat16-fast": ["--vae-channels", "32", "64", "--unet-channels", "32", "64", "128", "--no-unet-top-attention",
                   "--snr-gamma", "5"],
    "lat16-v": [*LAT16, "--snr-gamma", "5", "--prediction-type", "v_prediction"],
    # the shipped shape, predicting v instead of the noise: the same cost per step
    "lat16-fast-v": ["--vae-channels", "32", "64", "--unet-channels", "32", "64", "128", "--no-unet-top-attention",
                     "--snr-gamma", "5", "--prediction-type", "v_prediction"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--unet-steps", type=int, default=1200)
    p.add_argument("--work-dir", default="runs/base-candidates")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "base-candidates"))
    p.add_argument("--per-class", type=int, default=100, help="fidelity: images per class")
    p.add_argument("--cas-seeds", type=int, nargs="*", default=[0])
    p.add_argument("--cas-steps", type=int, default=400, help="CAS optimizer steps (bench/fidelity.py --steps)")
    p.add_argument("--gen-steps", type=int, default=None, help="fidelity: sampling steps (default: the project's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--evaluator", default=None, help="default: the embedded evaluator")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def run(cmd: list) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    common = ["--vae-steps", args.vae_steps, "--unet-steps", args.unet_steps, "--eval-samples", "0"]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.no_progress:
        common.append("--no-progress")
    rows = []
    steps_tag = f"v{args.vae_steps}-u{args.unet_steps}"  # another step count is another candidate folder
    for name in args.only:
        out, run_dir = work / steps_tag / name / "base", work / steps_tag / name / "run"
        if not (out / "metrics.json").is_file():
            run([sys.executable, "train/train_base.py", "--output-dir", out, "--run-dir", run_dir,
                 *common, *CANDIDATES[name]])
        m = json.loads((out / "metrics.json").read_text())
        params = {}
        for part in ("vae", "unet"):
            cfg = out / part / "config.json"
            params[part] = json.loads(cfg.read_text()).get("block_out_channels")
        rows.append({"candidate": name, "flags": " ".join(CANDIDATES[name]) or "(shipped shape)",
                     "vae_channels": params["vae"], "unet_channels": params["unet"],
                     "latent": f"{m['tiny_config']['latent_channels']}x{32 // 2 ** (len(params['vae']) - 1)}"
                               f"x{32 // 2 ** (len(params['vae']) - 1)}",
                     "vae_seconds": round(m["stage_seconds"].get("vae", float("nan"))),
                     "unet_seconds": round(m["stage_seconds"].get("unet", float("nan"))),
                     "vae_psnr": m["vae_reconstruction_test"]["psnr"],
                     "vae_ssim": m["vae_reconstruction_test"].get("ssim")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "candidates.csv", index=False)
    print(table.to_string(index=False))
    fid = [sys.executable, "bench/fidelity.py", "--models", *[work / steps_tag / n / "base" for n in args.only],
           "--per-class", args.per_class, "--cas-seeds", *args.cas_seeds, "--steps", args.cas_steps, "--out", out,
           "--cache-dir", work / "fidelity-cache"]
    if args.gen_steps:
        fid += ["--gen-steps", args.gen_steps]
    if args.data_dir:
        fid += ["--data-dir", args.data_dir]
    if args.evaluator:
        fid += ["--evaluator", args.evaluator]
    if args.no_progress:
        fid.append("--no-progress")
    run(fid)


if __name__ == "__main__":
    main()
