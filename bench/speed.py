#!/usr/bin/env python
"""Sampling speed of the dacd pipeline, and what fewer steps cost in control.

    python bench/speed.py                      # shipped embedded default
    python bench/speed.py --threads 1 --repeats 5

Prints images/s for a batch of 8: with vs without difficulty tokens (dacd vs the baseline's
text-only sequence), two- vs three-branch guidance, and DDIM vs DPM-Solver++ at 10/15/25
steps together with the Spearman(requested s, measured cell means) of a small grid at each
setting. Ratios are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dacd.classifier import Classifier
from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT
from dacd.evaluation import S_BINS, cell_table, generate_rows, measure, spearman
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]
CK = EMBEDDED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(CK / LAYOUT.dacd))
    p.add_argument("--baseline", default=str(CK / LAYOUT.baseline))
    p.add_argument("--evaluator", default=str(CK / LAYOUT.evaluator))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grid-n", type=int, default=8, help="images per (class, s) cell for the control check")
    p.add_argument("--classes", nargs="*", type=int, default=[0, 2, 4, 6], help="control-check classes")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.json"))
    return p.parse_args(argv)


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    args = parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = DifficultyControlledPipeline.from_pretrained(args.model)
    base = DifficultyControlledPipeline.from_pretrained(args.baseline) if Path(args.baseline).is_dir() else None
    evaluator = Classifier.from_pretrained(args.evaluator) if Path(args.evaluator).is_dir() else None
    for p in (pipe, base):
        if p is not None:
            p.set_progress_bar_config(disable=True)
    labels, s = [6] * 8, list(np.linspace(0.05, 0.95, 8))
    results = {"threads": torch.get_num_threads(), "batch": 8}

    def run(p, steps=15, sched="ddim", g=3.0, gd=3.0, branches="auto"):
        kw = dict(num_inference_steps=steps, scheduler=sched, guidance_scale=g, output_type="np",
                  generator=torch.Generator().manual_seed(0))
        if p.has_difficulty:
            kw.update(difficulty_guidance_scale=gd, guidance_branches=branches)
        return lambda: p(labels, s, **kw)

    t_d = timed(run(pipe), args.repeats)
    results["with_difficulty_tokens_img_s"] = 8 / t_d
    if base is not None:
        t_b = timed(run(base), args.repeats)
        results["without_difficulty_tokens_img_s"] = 8 / t_b
        results["difficulty_latency_overhead"] = t_d / t_b - 1
    t3 = timed(run(pipe, branches="three"), args.repeats)
    results["two_branch_img_s"], results["three_branch_img_s"] = 8 / t_d, 8 / t3
    results["three_over_two_latency"] = t3 / t_d

    grid_labels = np.repeat(args.classes, len(S_BINS) * args.grid_n)
    grid_s = np.tile(np.repeat(S_BINS, args.grid_n), len(args.classes))
    rows = []
    for sched in ("ddim", "dpm++"):
        for steps in (10, 15, 25):
            t = timed(run(pipe, steps=steps, sched=sched), args.repeats)
            row = {"scheduler": sched, "steps": steps, "img_s": 8 / t}
            if evaluator is not None:
                rows_ = pd.DataFrame({"label": grid_labels, "requested_s": grid_s, "seed": np.arange(len(grid_s))})
                imgs = generate_rows(pipe, rows_, SamplingSettings(steps, sched), batch_size=80)
                m, _ = measure(evaluator, imgs, grid_labels)
                cells = cell_table(pd.DataFrame({"label": grid_labels, "requested_s": grid_s, **m}),
                                   pipe.class_names)
                row["spearman"] = spearman(cells.bin, cells.measured_mean)
                row["mae"] = float(cells.abs_error.mean())
            rows.append(row)
            print(row, flush=True)
    results["schedulers"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "schedulers"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
