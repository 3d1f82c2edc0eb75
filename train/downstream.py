#!/usr/bin/env python
"""Does medium-difficulty synthetic data help a classifier? The paper's experiment on Fashion-MNIST.

    python train/downstream.py                 # full table (cached: rerun to continue)
    python train/downstream.py --quick         # minutes, tiny settings (tests / CI)
    python train/downstream.py --seeds 0 1 2 3 4 5 6 7 --mus 0.5 0.9 --ratios 0.25

Cells: the real subset alone (default a stratified 10% of the training split); plus dacd
sets at s ~ N(mu, sigma) for each mu, and the baseline's set, at each ratio (synthetic
images per class = ratio x the real subset's). Each generated set is made once, at the
largest ratio, by dacd.generation (resumable, with a manifest); smaller ratios take its
first ids per class. Every cell trains the same architecture for the same number of
optimizer steps, once per seed (the same seeds in every cell, so differences are paired),
and is tested on the full test split.

Writes to --out: runs.csv (one row per cell and seed), results.csv (per cell: accuracy
mean ± std, paired difference to real-only with a 95% t-interval), results.md (the same
as a markdown table), sets.csv (each generated set's measured medium-band share) and
downstream.html. Each (cell, seed)
result is cached under --work-dir, so an interrupted table continues where it stopped.

A set can also be made beforehand, e.g. on GPUs with `accelerate launch train/generate.py
--out <work-dir>/synthetic/dacd-mu0.5 --ratio 0.25 --real-fraction 0.1 --mu 0.5`: a folder
with a finished manifest.parquet is used as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "checkpoints" / "fashion-mnist"
RESULT_COLUMNS = ["cell", "model", "mu", "ratio", "seeds", "accuracy_mean", "accuracy_std", "paired_seeds",
                  "diff_mean", "diff_ci_low", "diff_ci_high", "significant", "n_real", "n_synthetic",
                  "measured_medium_share"]
RUN_COLUMNS = ["cell", "model", "mu", "ratio", "seed", "accuracy", "n_real", "n_synthetic", "steps", "seconds"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--real-fraction", type=float, default=0.1, help="stratified fraction of the training split")
    p.add_argument("--real-seed", type=int, default=0)
    p.add_argument("--model", default=str(EMBEDDED / "dacd"))
    p.add_argument("--baseline", default=str(EMBEDDED / "baseline"), help="'' to leave the baseline out")
    p.add_argument("--evaluator", default=str(EMBEDDED / "evaluator"))
    p.add_argument("--mus", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arch", default="resnet10t", help="timm architecture of the downstream classifier")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps, the same for every cell")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gen-steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    p.add_argument("--gen-batch-size", type=int, default=50)
    p.add_argument("--gen-seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/downstream", help="generated sets and cached cell results")
    p.add_argument("--out", default=None, help="default bench/results/downstream[-quick]")
    p.add_argument("--quick", action="store_true",
                   help="2%% real subset, mu 0.5 and 0.9, ratio 0.25, 2 seeds, 30 steps, 4 sampling steps")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.real_fraction, args.mus, args.ratios, args.seeds = 0.02, [0.5, 0.9], [0.25], [0, 1]
        args.steps, args.gen_steps = 30, args.gen_steps or 4
        if args.work_dir == "runs/downstream":
            args.work_dir = "runs/downstream-quick"
    args.out = Path(args.out or ROOT / "bench" / "results" / ("downstream-quick" if args.quick else "downstream"))
    return args


def cell_specs(args) -> list[dict]:
    cells = [{"cell": "real-only", "model": "", "mu": float("nan"), "ratio": 0.0, "set": None}]
    for r in args.ratios:
        for mu in args.mus:
            cells.append({"cell": f"dacd mu={mu:g} r={r:g}", "model": "dacd", "mu": mu, "ratio": r,
                          "set": f"dacd-mu{mu:g}"})
        if args.baseline:
            cells.append({"cell": f"baseline r={r:g}", "model": "baseline", "mu": float("nan"), "ratio": r,
                          "set": "baseline"})
    return cells


def make_sets(args, real, work: Path, progress: bool) -> dict:
    """Generate (or resume) one set per model/mu at the largest ratio; returns {set name: folder}."""
    import torch

    from dacd.classifier import Classifier
    from dacd.generation import (DifficultySpec, SamplingSettings, counts_from_ratio, generate_dataset,
                                 load_manifest, make_plan)
    from dacd.pipeline import DifficultyControlledPipeline

    counts = counts_from_ratio(real.labels, max(args.ratios), real.num_classes)
    wanted = {f"dacd-mu{mu:g}": (args.model, DifficultySpec(mu=mu, sigma=args.sigma)) for mu in args.mus}
    if args.baseline:
        wanted["baseline"] = (args.baseline, DifficultySpec(mu=0.5, sigma=args.sigma))  # recorded, not used
    folders, pipes, evaluator = {}, {}, None
    for name, (model, spec) in wanted.items():
        folder = work / "synthetic" / name
        folders[name] = folder
        if (folder / "manifest.parquet").is_file():
            continue
        if model not in pipes:
            pipes[model] = DifficultyControlledPipeline.from_pretrained(model)
            pipes[model].set_progress_bar_config(disable=True)
        pipe = pipes[model]
        if list(pipe.class_names) != list(real.class_names):
            raise SystemExit(f"{model} knows classes {list(pipe.class_names)}, the data {list(real.class_names)}")
        evaluator = evaluator or Classifier.from_pretrained(args.evaluator)
        plan = make_plan(real.class_names, counts, spec, seed=args.gen_seed)
        print(f"generating {name}: {len(plan)} images ({spec.describe()}) from {model}", flush=True)
        with torch.inference_mode():
            generate_dataset(pipe, plan, folder, model_id=str(model), evaluator=evaluator,
                             sampling=SamplingSettings(num_inference_steps=args.gen_steps),
                             batch_size=args.gen_batch_size, progress=progress, real_subset=real.name,
                             extra_config={"difficulty": {**spec.__dict__, "description": spec.describe()},
                                           "real_subset": real.name, "ratio": max(args.ratios)})
        load_manifest(folder)
    return folders


def set_identity(folder: Path) -> str:
    """What a cached cell result depends on in a generated set: its plan and its model."""
    cfg = json.loads((folder / "generation.json").read_text())
    return f"{cfg['plan_fingerprint']}:{cfg['model']}"


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import pandas as pd

    from dacd.data import load_dataset, stratified_subset, subset_name
    from dacd.evaluation import paired_comparison, train_downstream_cell
    from dacd.generation import counts_from_ratio, load_generated_images, load_manifest, manifest_summary, take_first

    t_start = time.time()
    progress = not args.no_progress
    work = Path(args.work_dir)
    (work / "cells").mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(args.data, "train", args.data_dir), load_dataset(args.data, "test", args.data_dir)
    idx = stratified_subset(train.labels, args.real_fraction, args.real_seed)
    real = train.subset(idx)
    real.name = subset_name(train.name, "train", args.real_fraction, args.real_seed)
    print(f"real subset: {real.name}, {len(real)} images; test: {len(test)} images", flush=True)
    folders = make_sets(args, real, work, progress)

    manifests = {name: load_manifest(f) for name, f in folders.items()}
    set_rows = [{"set": name, **{k: v for k, v in manifest_summary(m).items() if k != "medium_band"}}
                for name, m in manifests.items()]
    fingerprints = {name: set_identity(f) for name, f in folders.items()}
    run_rows = []
    cells = cell_specs(args)
    todo = [(c, s) for c in cells for s in args.seeds]
    for i, (cell, seed) in enumerate(todo):
        key = f"{cell['cell'].replace(' ', '_').replace('=', '')}-seed{seed}"
        cache = work / "cells" / f"{key}.json"
        meta = {"real_subset": real.name, "arch": args.arch, "steps": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "set": fingerprints.get(cell["set"])}
        if cache.is_file():
            res = json.loads(cache.read_text())
            if res.get("meta") != meta:
                raise SystemExit(f"{cache} was made with other settings ({res.get('meta')}); use another "
                                 "--work-dir or delete the cells/ folder")
        else:
            synth_x = synth_y = None
            if cell["set"] is not None:
                m = take_first(manifests[cell["set"]], counts_from_ratio(real.labels, cell["ratio"],
                                                                         real.num_classes))
                synth_x = load_generated_images(folders[cell["set"]], m)
                synth_y = np.array([real.class_index(c) for c in m["class"]])
            res = train_downstream_cell(real.images, real.labels, synth_x, synth_y, test.images, test.labels,
                                        arch=args.arch, class_names=list(real.class_names), steps=args.steps,
                                        seed=seed, batch_size=args.batch_size, lr=args.lr, progress=progress)
            res["meta"] = meta
            tmp = cache.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, cache)
            print(f"[{i + 1}/{len(todo)}] {cell['cell']:<22} seed {seed}: accuracy {res['accuracy']:.4f} "
                  f"({res['n_real']} real + {res['n_synthetic']} synthetic, {res['seconds']:.0f} s)", flush=True)
        run_rows.append({**{k: cell[k] for k in ("cell", "model", "mu", "ratio")}, "seed": seed,
                         **{k: res[k] for k in ("accuracy", "n_real", "n_synthetic", "steps", "seconds")}})

    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    table = paired_comparison(runs)
    info = runs.groupby("cell", sort=False).agg(model=("model", "first"), mu=("mu", "first"),
                                                ratio=("ratio", "first"), n_real=("n_real", "first"),
                                                n_synthetic=("n_synthetic", "first"))
    table = table.join(info, on="cell")
    shares = {r["set"]: r["measured_medium_share"] for r in set_rows}
    set_of = {c["cell"]: c["set"] for c in cells}
    table["measured_medium_share"] = [shares.get(set_of[name], float("nan")) for name in table.cell]
    table = table[RESULT_COLUMNS]
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "runs.csv", index=False)
    table.to_csv(args.out / "results.csv", index=False)
    pd.DataFrame(set_rows).to_csv(args.out / "sets.csv", index=False)
    write_figure(table, args.out / "downstream.html", real.name)
    with open(args.out / "settings.json", "w") as f:
        json.dump({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, f, indent=1)

    pd.set_option("display.width", 200)
    print(f"\nreal subset {real.name} ({len(real)} images), {args.arch}, {args.steps} steps x {args.batch_size}, "
          f"seeds {args.seeds}; test accuracy on {len(test)} images")
    show = table.assign(accuracy=[f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(table.accuracy_mean,
                                                                                     table.accuracy_std)],
                        paired_diff=[f"{d * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]" for d, lo, hi in
                                     zip(table.diff_mean, table.diff_ci_low, table.diff_ci_high)],
                        medium=[f"{x:.3f}" for x in table.measured_medium_share])
    print(show[["cell", "accuracy", "paired_diff", "significant", "n_synthetic", "medium"]].to_string(index=False))
    write_markdown(show, args, real, len(test))
    print("\ngenerated sets (measured by the evaluation classifier):")
    print(pd.DataFrame(set_rows).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nwrote {args.out}/runs.csv, results.csv, results.md, sets.csv, downstream.html in "
          f"{time.time() - t_start:.0f} s")
    return 0


def write_markdown(show, args, real, n_test: int) -> None:
    """results.md: the table as printed, for the README."""
    lines = [f"Real subset: {real.name} ({len(real)} images); {args.arch}, {args.steps} steps x {args.batch_size} "
             f"for every cell; seeds {' '.join(map(str, args.seeds))}; test accuracy on {n_test} test images.", "",
             "| cell | test accuracy % (mean ± std) | paired difference to real-only, points [95% CI] | "
             "CI excludes 0 | synthetic images | set's measured medium-band share |",
             "|---|---|---|---|---|---|"]
    for r in show.itertuples():
        lines.append(f"| {r.cell} | {r.accuracy} | {r.paired_diff if r.cell != 'real-only' else '—'} | "
                     f"{'yes' if r.significant else 'no'} | {r.n_synthetic} | {r.medium} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


def write_figure(table, path: Path, real_name: str) -> None:
    import numpy as np
    import plotly.graph_objects as go

    t = table[table.cell != "real-only"]
    fig = go.Figure()
    for model, sub in t.groupby("model", sort=False):
        fig.add_trace(go.Scatter(
            x=sub.cell, y=sub.diff_mean * 100, mode="markers", name=model,
            error_y=dict(type="data", symmetric=False, array=(sub.diff_ci_high - sub.diff_mean) * 100,
                         arrayminus=(sub.diff_mean - sub.diff_ci_low) * 100),
            customdata=np.c_[sub.accuracy_mean * 100, sub.measured_medium_share],
            hovertemplate="%{x}<br>paired diff %{y:+.2f} pts<br>accuracy %{customdata[0]:.2f}%"
                          "<br>medium-band share %{customdata[1]:.3f}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", annotation_text="real only")
    fig.update_layout(title=f"Test accuracy minus real-only (paired by seed, 95% t-interval); real: {real_name}",
                      yaxis_title="accuracy difference (points)", template="plotly_white", height=480)
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline


if __name__ == "__main__":
    sys.exit(main())
