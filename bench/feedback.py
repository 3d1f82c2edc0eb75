#!/usr/bin/env python
"""Feedback guidance against plain sampling and selection, on the selection probe's protocol.

The plan of `python train/generate.py --per-class 20` (s ~ N(0.5, 0.1), seed 0, 200 images), made
with feedback guidance (`dacd.feedback`, the scoring classifier's gradient on the first --fb-steps
of the denoising steps) at each --scales value (0 = plain sampling), judged by the evaluation
classifier: medium-band share against the real ceiling of the same plan (real test images nearest
each requested s by scoring s), label accuracy, per-class calibration error (mean |class mean
measured s - class mean requested s|) and images per second. Selected sets made with
train/generate.py (--probe folders, their manifests) are judged the same way beside it.

    python bench/feedback.py
    python bench/feedback.py --scales 0 0.5 1 2 --fb-steps 5 --probe runs/probe/sel-pilot4 runs/probe/sel-pilot4-tol10
    python bench/feedback.py --scales 0 --ceiling-committee C/classifier C/classifier-2 C/classifier-3 ...

With --ceiling-committee, a row judges the real ceiling's images that pass that committee's label
rule (every member ranks the label first), the rule pooled and selected sets keep to: what the rule
leaves of real data of the same plan. The ratio to the ceiling stays against all real images.

Writes summary.csv and summary.md to --out. Images per second are only comparable within one run
on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dacd.classifier import load_classifiers
from dacd.data import load_dataset
from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, LAYOUT, MEDIUM_BAND, recorded_model
from dacd.difficulty import load_scores
from dacd.evaluation import generate_rows, markdown_table, measure, medium_share, real_ceiling_sample
from dacd.feedback import FeedbackGuidance
from dacd.generation import DifficultySpec, committee_scores, make_plan, read_png, to_uint8
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]
CK = EMBEDDED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(CK / LAYOUT.dacd))
    p.add_argument("--scorer", default=str(CK / LAYOUT.classifier), help="the classifier whose gradient steers")
    p.add_argument("--evaluator", default=str(CK / LAYOUT.evaluator), help="the judge (never steers)")
    p.add_argument("--scores", default=str(CK / LAYOUT.scores))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--mu", type=float, default=DIFFICULTY.mu)
    p.add_argument("--sigma", type=float, default=DIFFICULTY.sigma)
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--fb-steps", type=int, default=5, help="steered steps (of the sampler's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="text guidance of every row (default: the project's); --probe sets must be made with it")
    p.add_argument("--difficulty-guidance", type=float, default=None,
                   help="difficulty guidance of every row (default: the project's); --probe sets must be made with it")
    p.add_argument("--probe", nargs="*", default=[], help="selected or pooled sets (train/generate.py folders) to "
                   "judge beside")
    p.add_argument("--ceiling-committee", nargs="+", default=None, metavar="FOLDER",
                   help="also judge the real ceiling's images that every member of this committee classifies as "
                        "their label (the label rule applied to real images; the ceiling stays all of them)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "feedback"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def judge(name, evaluator, images, plan, seconds=None) -> dict:
    m, _ = measure(evaluator, images, plan.label.to_numpy())
    s = m.measured_s.to_numpy()
    df = plan.assign(measured_s=s)
    cal = (df.groupby("label").measured_s.mean() - df.groupby("label").requested_s.mean()).abs()
    return {"source": name, "images": len(plan), "medium_share": medium_share(s, MEDIUM_BAND),
            "evaluator_accuracy": float((m.pred.to_numpy() == plan.label.to_numpy()).mean()),
            "measured_s_mean": float(s.mean()), "calibration_error": float(cal.mean()),
            "images_per_second": len(plan) / seconds if seconds else float("nan")}


def ceiling_rows(evaluator, images, plan, committee=()) -> list[dict]:
    """The real ceiling's row (real images standing in for the plan's, judged by the evaluator) and,
    with a committee, the row of those of them that every member classifies as their label: the
    label rule of pooled and selected sets applied to real images (its `images` says how many pass)."""
    rows = [judge("real ceiling (test images)", evaluator, images, plan)]
    if committee:
        _, faithful = committee_scores(committee, images, plan.label.to_numpy())
        rows.append(judge(f"real ceiling, faithful to the {len(committee)}-member committee", evaluator,
                          images[faithful], plan[faithful]))
    return rows


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DifficultyControlledPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    loaded = {}  # a classifier named twice (the scorer in --ceiling-committee) loads once
    scorer, evaluator = load_classifiers([args.scorer, args.evaluator], loaded=loaded)
    names = list(pipe.class_names)
    plan = make_plan(names, args.per_class, DifficultySpec(mu=args.mu, sigma=args.sigma), seed=0,
                     prompt_template=pipe.prompt_template)
    settings = SamplingSettings(guidance_scale=args.guidance, difficulty_guidance_scale=args.difficulty_guidance)
    rows = []

    # the real ceiling: test images nearest each requested s (scoring s), judged by the evaluator
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    scores = load_scores(args.scores)
    te = scores[scores.split == "test"].set_index("id").loc[list(test.ids)].reset_index()
    pos = real_ceiling_sample(te, plan.requested_s.to_numpy(), plan.label.to_numpy())
    committee = load_classifiers(args.ceiling_committee or [], loaded=loaded)
    rows += ceiling_rows(evaluator, test.images[pos], plan, committee)

    for scale in args.scales:
        fb = None if scale == 0 else FeedbackGuidance(scorer, scale=scale, steps=args.fb_steps)
        t0 = time.time()
        imgs = generate_rows(pipe, plan, settings, batch_size=args.batch_size, progress=not args.no_progress,
                             desc=f"scale {scale:g}", **({} if fb is None else {"feedback": fb}))
        seconds = time.time() - t0
        name = "plain" if fb is None else f"feedback scale {scale:g}, {args.fb_steps} steps"
        # judged as stored (uint8), like the probe sets' PNGs
        rows.append(judge(name, evaluator, to_uint8(imgs), plan, seconds))
        print(json.dumps(rows[-1], default=float), flush=True)

    for folder in map(Path, args.probe):
        man = pd.read_parquet(folder / "manifest.parquet").set_index("id")
        gen = json.loads((folder / "generation.json").read_text())
        if not plan.id.isin(man.index).all() or not np.allclose(man.loc[plan.id].requested_s, plan.requested_s):
            raise SystemExit(f"{folder} was made for another plan: train/generate.py --per-class {args.per_class} "
                             f"--mu {args.mu} --sigma {args.sigma} --seed 0")
        made_by = gen.get("model") and recorded_model(gen["model"])  # one name of a folder however spelled
        if gen.get("sampling") != settings.as_config() or made_by != recorded_model(args.model):
            raise SystemExit(f"{folder} was made with model {gen.get('model')!r} and sampling {gen.get('sampling')}, "
                             f"not {args.model} at {settings.as_config()} (bench/feedback.py --guidance and "
                             "--difficulty-guidance set the two guidance scales)")
        man = man.loc[plan.id]
        imgs = np.stack([read_png(folder / p) for p in man.path])  # uint8 (N, C, H, W)
        sel, pool = gen.get("selection"), gen.get("pooling")
        detail = ("" if not sel else f" (tries {sel.get('max_tries')}, tol {sel.get('tolerance')}, "
                  f"faithful pilot {sel.get('pilot_faithful', False)})")
        if pool:  # its conditioning, from the pool's record: where the set says, else train/generate.py's default
            found = [d / "generation.json" for d in (Path(gen["pool_folder"]) if gen.get("pool_folder") else None,
                                                     folder.with_name(folder.name + "-pool")) if d is not None]
            found = [c for c in found if c.is_file()]
            drawn = (json.loads(found[0].read_text()).get("difficulty", {}).get("description", "s ~ U(0, 1)")
                     if found else "conditioning unknown: its pool folder is gone")
            detail += f" (pool {pool.get('factor')}x at {drawn}, label rule {pool.get('label_rule')})"
        rows.append(judge(f"{gen.get('sampling_mode', 'selected')}: {folder.name}{detail}", evaluator, imgs, plan))

    table = pd.DataFrame(rows)
    ceiling = table.medium_share.iloc[0]
    table["medium_over_ceiling"] = table.medium_share / ceiling
    table.to_csv(out / "summary.csv", index=False)
    md = markdown_table(table)
    (out / "summary.md").write_text(f"{len(plan)} images, s ~ N({args.mu}, {args.sigma}), {args.per_class} per class; "
                                    f"text guidance {settings.guidance_scale:g}, difficulty guidance "
                                    f"{settings.difficulty_guidance_scale:g}; "
                                    f"judged by {Path(args.evaluator).name}; feedback by {Path(args.scorer).name}\n\n"
                                    + md + "\n")
    print(md)


if __name__ == "__main__":
    main()
