#!/usr/bin/env python
"""Reduced-protocol comparison of dacd variants and sampling settings (issue: the embedded default).

Training variants: train_dacd.py on the four confusable classes (Shirt, T-shirt/top,
Pullover, Coat) for 1,200 steps in one thread (~10 minutes each), then
bench/controllability.py on the same classes (N=10 per cell, 40 per class at N(0.5, 0.1))
at difficulty guidance 3 and 6. Sampling settings: the shipped dacd model under several
(text guidance, difficulty guidance) pairs with the same measurement.

    python bench/variants.py                 # runs what is missing under --work-dir, prints the table
    python bench/variants.py --collect-only  # only the table from what exists

Every step skips outputs that exist, so an interrupted comparison continues. Writes
bench/results/variants.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dacd.defaults import EMBEDDED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Shirt", "T-shirt/top", "Pullover", "Coat"]
TRAIN_VARIANTS = {  # name -> extra train_dacd.py arguments (defaults: balance power 0.5, 4 tokens, encoder lr 1e-3)
    "v0-default": [],
    "v1-balance-power-1": ["--balance-power", "1.0"],
    "v2-16-tokens-encoder-lr-3e-3": ["--num-tokens", "16", "--encoder-lr", "3e-3"],
}
TRAIN_GUIDANCE = [(3.0, 3.0), (3.0, 6.0)]
SAMPLING = [(3.0, 3.0), (3.0, 6.0), (3.0, 9.0), (5.0, 8.0), (1.5, 3.0), (1.5, 6.0), (1.5, 10.0), (1.0, 6.0)]


def run(cmd, log: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    print("+", " ".join(map(str, cmd)), flush=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                       check=True)


def evaluate(model: Path, g: float, gd: float, out: Path, collect_only: bool):
    if not (out / "summary.json").is_file() and not collect_only:
        run(["bench/controllability.py", "--model", model, "--baseline", "", "--classes", *CLASSES, "--n", "10",
             "--n-medium", "40", "--guidance", g, "--difficulty-guidance", gd, "--out", out, "--no-progress"],
            out.parent / f"{out.name}.log")
    if not (out / "summary.json").is_file():
        return None
    d = json.loads((out / "summary.json").read_text())
    return {"spearman": d["dacd"]["spearman_overall"], "mae": d["dacd"]["mae"],
            "accuracy_s_le_0.2": d["accuracy_at_s_le_0.2"], "medium_share": d["medium_band_share"]["dacd"],
            "medium_over_ceiling": d["medium_band_share"]["dacd_over_ceiling"],
            "kid_high_over_low": d["kid_high_over_low"], "ceiling_spearman": d["real_ceiling"]["spearman_overall"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="runs/variants")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--collect-only", action="store_true")
    args = p.parse_args(argv)

    work = ROOT / args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, extra in TRAIN_VARIANTS.items():
        model = work / f"model-{name}"
        if not (model / "dacd_config.json").is_file() and not args.collect_only:
            run(["train/train_dacd.py", "--classes", *CLASSES, "--max-train-steps", args.steps,
                 "--checkpointing-steps", "300", "--run-dir", work / f"run-{name}", "--output-dir", model,
                 "--no-progress", *extra], work / f"train-{name}.log")
        for g, gd in TRAIN_GUIDANCE:
            res = evaluate(model, g, gd, work / f"eval-{name}-g{g:g}-gd{gd:g}", args.collect_only)
            if res:
                rows.append({"kind": "training", "variant": name, "guidance": g, "difficulty_guidance": gd, **res})
    shipped = EMBEDDED_CHECKPOINT / "dacd"
    for g, gd in SAMPLING:
        res = evaluate(shipped, g, gd, work / f"shipped-g{g:g}-gd{gd:g}", args.collect_only)
        if res:
            rows.append({"kind": "sampling", "variant": "shipped dacd (10 classes, 1500 steps)", "guidance": g,
                         "difficulty_guidance": gd, **res})
    table = pd.DataFrame(rows)
    out = ROOT / "bench" / "results" / "variants.csv"
    table.to_csv(out, index=False)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
