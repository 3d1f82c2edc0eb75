#!/usr/bin/env python
"""Generate a synthetic training set with a difficulty dial: ImageFolder + manifest.parquet.

    python train/generate.py --out runs/synth/dacd-mu0.5 --per-class 500              # s ~ N(0.5, 0.1)
    python train/generate.py --out runs/synth/hard --s 0.8 --per-class 100            # a fixed difficulty
    python train/generate.py --out runs/synth/r25 --ratio 0.25 --real-fraction 0.1    # 25% of a named real subset
    python train/generate.py --out runs/synth/base --model baseline --per-class 500   # the baseline LoRA
    python train/generate.py --model my/dacd --evaluator my/evaluator --prompts captions.json ...
    python train/generate.py --out runs/synth/anchored --ratio 0.25 --real-fraction 0.1 --anchor real --strength 0.5
                                                    # each image an edit of a real image of the subset
    python train/generate.py --out runs/synth/pooled --per-class 150 --pool 6 --tolerance 0.1
                                                    # a pool of 6x at s ~ U(0, 1), matched to the plan
    python train/generate.py --out runs/synth/chosen --ratio 0.25 --real-fraction 0.1 --pool 12 --pool-difficulty plan \
        --tolerance 0.1 --guidance 1 --difficulty-guidance 1 --committee C/classifier C/classifier-2 C/classifier-3
                                                    # issue #12's chosen sampling on the v chain (README Results)
    python train/generate.py --out runs/synth/ap --ratio 0.25 --real-fraction 0.1 --pool 6 --anchor real  # a pool of edits
    python train/generate.py --out runs/synth/tiered --per-class 150 --pool 12 --committee C/classifier C/classifier-2 \
        C/classifier-3 --looser-committee C/classifier C/classifier-2   # tiered label rule (C: the checkpoint)
    accelerate launch --num_processes 4 train/generate.py --out ... --per-class 5000  # GPUs / machines
    accelerate launch --cpu --num_processes 2 train/generate.py ...                   # CPU processes

An image's id fixes its seed, its requested s and its prompt. Rerun the same command
after an interruption: finished chunks are kept, the rest is generated, and the manifest
ends with exactly the planned ids. Every row of the manifest carries the evaluation
classifier's measured s and predicted class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
from accelerate import PartialState

from dacd.classifier import Classifier, load_classifiers
from dacd.data import load_dataset, resolve_class, stratified_subset, subset_name
from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, LAYOUT, PROMPT_TEMPLATE, default_committee, model_folder
from dacd.feedback import FeedbackError, FeedbackGuidance
from dacd.generation import (
    Anchoring,
    DifficultySpec,
    GenerationError,
    Pooling,
    Selection,
    anchor_images,
    assign_anchors,
    committee_key,
    counts_from_ratio,
    feedback_scorer_name,
    generate_dataset,
    generate_pooled_set,
    load_difficulty_table,
    load_prompt_lists,
    make_plan,
    make_pool_plan,
    model_prompt_lists,
)
from dacd.img2img import DEFAULT_STRENGTH
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = EMBEDDED_CHECKPOINT


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (ImageFolder + manifest.parquet)")
    p.add_argument("--model", default="dacd", help="'dacd', 'baseline' (the embedded ones) or a dacd folder")
    p.add_argument("--base", default=None, help="override the base SD named in the model folder")
    p.add_argument("--evaluator", default=str(EMBEDDED / "evaluator"),
                   help="evaluation classifier folder for measured s ('none' to skip)")
    g = p.add_argument_group("difficulty (default s ~ N(0.5, 0.1) clipped to [0, 1])")
    g.add_argument("--mu", type=float, default=DIFFICULTY.mu)
    g.add_argument("--sigma", type=float, default=DIFFICULTY.sigma)
    g.add_argument("--s", type=float, default=None, help="a fixed difficulty for every image")
    g.add_argument("--s-table", default=None, help='JSON {"class": s or [mu, sigma]}; other classes use --mu/--sigma')
    c = p.add_argument_group("how many")
    c.add_argument("--per-class", type=int, default=None, help="images per class")
    c.add_argument("--ratio", type=float, default=None, help="per class, this times the real subset's count")
    c.add_argument("--data", default="fashion-mnist", help="real data for --ratio: 'fashion-mnist' or an ImageFolder")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--real-fraction", type=float, default=1.0, help="the real subset: a stratified fraction of "
                   "the training split (recorded in generation.json)")
    c.add_argument("--real-seed", type=int, default=0)
    c.add_argument("--classes", nargs="*", default=None, help="only these classes (names or ids)")
    s = p.add_argument_group("sampling")
    s.add_argument("--prompts", default=None, help="per-class captions: JSON {class: [captions]} or "
                   "'class<TAB>caption' lines; default the model's confuser_prompts.json where it was trained "
                   "with --confuser-prompts, else its template prompt")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--scheduler", default=None, help="dpm++ or ddim (default: the pipeline's)")
    s.add_argument("--guidance", type=float, default=None)
    s.add_argument("--difficulty-guidance", type=float, default=None)
    s.add_argument("--calibrated", action="store_true", help="condition on the value that measures as requested "
                   "(by the curve's classifiers: for the shipped one, the mean s of the three scoring classifiers)")
    s.add_argument("--batch-size", type=int, default=32, help="images per chunk (keep it fixed when resuming)")
    sel = p.add_argument_group("selection (sampling 'selected': over-generate, keep what the committee measures as asked)")
    sel.add_argument("--select", action="store_true", help="try each row up to --max-tries times and keep the try "
                     "whose committee-measured s is within --tolerance of the request")
    sel.add_argument("--max-tries", type=int, default=Selection.max_tries)
    sel.add_argument("--tolerance", type=float, default=None,
                     help=f"|committee s - request| (default {Selection.tolerance:g} for --select; "
                          f"{Pooling.tolerance:g} for --pool, where it only marks `accepted`)")
    sel.add_argument("--no-label-rule", action="store_true",
                     help="accept a try even when a committee member ranks another class first")
    sel.add_argument("--pilot", type=int, default=Selection.pilot,
                     help="before the first chunk, N images per class and grid value of s fit per-class conditioning "
                          "(stored in generation.json; 0: none, condition on the request)")
    sel.add_argument("--pilot-faithful", action="store_true",
                     help="fit the pilot on the images every committee member still classifies as their label")
    sel.add_argument("--committee", nargs="+", default=None,
                     help="scoring classifier folders (default: the checkpoint's classifier/ and classifier-2/); "
                          "never the evaluator, which judges")
    po = p.add_argument_group("pooled selection (sampling 'pooled': generate a pool once, match it to the plan)")
    po.add_argument("--pool", type=int, default=0, metavar="FACTOR",
                    help="generate FACTOR x the plan per class at s ~ U(0, 1) (or, with --pool-difficulty plan, at "
                         "the plan's difficulty) into --pool-dir, measure it with the "
                         "committee and give each row the unused pool image nearest its request, label-faithful "
                         "ones first (--tolerance and --no-label-rule apply; 0: off). With --anchor real the pool "
                         "is made of edits of real images (sampling 'anchored-pooled')")
    po.add_argument("--pool-difficulty", choices=["uniform", "plan"], default="uniform",
                    help="the pool's conditioning: s ~ U(0, 1) (one pool serves plans of any --mu) or the plan's "
                         "own difficulty (--mu/--sigma/--s/--s-table: a pool per plan, so the dial moves the pool "
                         "itself, not only which of its images are taken)")
    po.add_argument("--looser-committee", nargs="+", default=None, metavar="FOLDER",
                    help="a looser committee (e.g. the shipped two when --committee holds three) for the tiered "
                         "label rule: a row takes the --committee's faithful image within --tolerance, else this "
                         "committee's, else the nearest faithful image (dacd.generation.match_tiered); the manifest "
                         "gains `tier`")
    po.add_argument("--pool-dir", default=None, help="where the pool goes (default: <out>-pool). It is kept: a "
                    "set with another --out, --tolerance or --committee and this --pool-dir is matched from it "
                    "without generating")
    po.add_argument("--pool-donors", nargs="+", default=[], metavar="FOLDER",
                    help="finished pools of the same model weights and settings whose rows this pool shares (e.g. "
                         "a 12x pool of the same plan, for --pool 24): their images are copied (and measured again "
                         "by the evaluator), not sampled again. The model is compared by its folder, so a pool of "
                         "weights since rebuilt there is yours to leave out; an unfinished one, or one of other "
                         "settings, is skipped with a warning")
    fb = p.add_argument_group("feedback guidance (the scoring classifier's gradient steers the first steps, dacd.feedback)")
    fb.add_argument("--feedback-scale", type=float, default=0.0, help="step size (0: off); bench/feedback.py measures it")
    fb.add_argument("--feedback-steps", type=int, default=5, help="steered denoising steps, from the first")
    fb.add_argument("--feedback-scorer", nargs="+", default=None, metavar="CLASSIFIER",
                    help="classifier folder(s) (default: the checkpoint's classifier/); several steer by their mean s "
                         "(a committee); never the evaluator. With --pool, every pool image is steered towards "
                         "its own requested s (sampling 'pooled+feedback')")
    an = p.add_argument_group("anchoring (sampling 'anchored', or 'anchored-pooled' with --pool: edit real images "
                              "of the class instead of sampling from noise)")
    an.add_argument("--anchor", choices=["none", "real"], default="none",
                    help="real: each image starts from a real training image of its class, drawn deterministically "
                         "from the real subset (--real-fraction, --real-seed); recorded as anchor_id")
    an.add_argument("--strength", type=float, default=None,
                    help=f"img2img strength of anchored images, in (0, 1] (default {DEFAULT_STRENGTH:g}, measured by "
                         "bench/edits.py)")
    an.add_argument("--anchor-seed", type=int, default=0, help="order in which a class's real images are used")
    s.add_argument("--seed", type=int, default=0, help="plan seed: with the class and index, fixes every image")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after-chunks", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated kill
    return p.parse_args(argv)


def build_plan(args, class_names, prompt_template: str = PROMPT_TEMPLATE, prompts=None):
    """The plan and its description; prompts follow the model's own template unless --prompts gives captions
    (`prompts`: that file already read by `load_prompt_lists`, else it is read here)."""

    if (args.per_class is None) == (args.ratio is None):
        raise GenerationError("give exactly one of --per-class N or --ratio R")
    if args.s is not None:
        spec = DifficultySpec(kind="fixed", value=args.s)
    elif args.s_table:
        spec = DifficultySpec(kind="table", mu=args.mu, sigma=args.sigma,
                              table=load_difficulty_table(args.s_table, class_names))
    else:
        spec = DifficultySpec(mu=args.mu, sigma=args.sigma)
    wanted = range(len(class_names))
    if args.classes:
        try:
            wanted = sorted({resolve_class(int(c) if str(c).isdigit() else c, class_names) for c in args.classes})
        except ValueError as e:
            raise GenerationError(str(e)) from None
    extra = {"difficulty": {**spec.__dict__, "description": spec.describe()}, "plan_seed": args.seed}
    if args.per_class is not None:
        if args.per_class < 1:
            raise GenerationError(f"--per-class must be >= 1, got {args.per_class}")
        counts = {c: args.per_class for c in wanted}
        extra["count"] = f"{args.per_class} per class"
    else:
        real = load_dataset(args.data, "train", args.data_dir)
        if list(real.class_names) != list(class_names):
            raise GenerationError(f"{args.data} has classes {list(real.class_names)}, the model {list(class_names)}")
        idx = stratified_subset(real.labels, args.real_fraction, args.real_seed)
        all_counts = counts_from_ratio(real.labels[idx], args.ratio, len(class_names))
        counts = {c: all_counts[c] for c in wanted}
        extra["count"] = f"ratio {args.ratio:g} of the real subset"
        extra["real_subset"] = {"name": subset_name(real.name, "train", args.real_fraction, args.real_seed),
                                "fraction": args.real_fraction, "seed": args.real_seed, "images": int(len(idx))}
    if prompts is None and args.prompts:
        prompts = load_prompt_lists(args.prompts, class_names)
    if prompts:
        extra["prompts_file"] = str(args.prompts) if args.prompts else f"the model's {LAYOUT.confuser_prompts}"
    plan = make_plan(class_names, counts, spec, prompts=prompts, prompt_template=prompt_template, seed=args.seed)
    subset = None
    if args.anchor == "real":
        real = load_dataset(args.data, "train", args.data_dir)
        if list(real.class_names) != list(class_names):
            raise GenerationError(f"{args.data} has classes {list(real.class_names)}, the model {list(class_names)}")
        subset = real.subset(stratified_subset(real.labels, args.real_fraction, args.real_seed))
        extra["anchors"] = {"from": subset_name(real.name, "train", args.real_fraction, args.real_seed),
                            "fraction": args.real_fraction, "seed": args.real_seed, "anchor_seed": args.anchor_seed}
    elif args.strength is not None:
        raise GenerationError("--strength applies to anchored sampling: add --anchor real")
    return plan, extra, subset


def anchored(plan, subset, seed: int):
    """`plan` with anchors from the real `subset` (an ImageDataset) and their images."""
    plan = assign_anchors(plan, subset.ids, subset.labels, seed)
    return plan, anchor_images(plan, subset.ids, subset.images)


def main(argv=None):
    args = parse_args(argv)

    state = PartialState()
    if state.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ and state.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    model_dir = model_folder(args.model)
    if not (model_dir / "dacd_config.json").is_file():
        raise SystemExit(f"{model_dir} is not a dacd model folder (no dacd_config.json): pass 'dacd', 'baseline' "
                         "or a folder written by train/train_dacd.py (make checkpoints builds the embedded ones)")
    dtype = torch.float16 if state.device.type == "cuda" else torch.float32
    if args.pool and args.select:
        raise SystemExit("error: --pool is its own sampling: leave out --select")
    if args.pool_difficulty != "uniform" and not args.pool:
        raise SystemExit("error: --pool-difficulty applies to a pool: add --pool FACTOR")
    if args.pool_donors and not args.pool:
        raise SystemExit("error: --pool-donors give a pool their images: add --pool FACTOR")
    if args.pool < 0:
        raise SystemExit(f"error: --pool must be a factor >= 1 (or 0 for off), got {args.pool}")
    if args.looser_committee and not args.pool:
        raise SystemExit("error: --looser-committee is a label rule of pooled sets: add --pool FACTOR")
    if args.looser_committee and args.no_label_rule:
        raise SystemExit("error: --looser-committee is a label rule: leave out --no-label-rule")
    pipe = DifficultyControlledPipeline.from_pretrained(model_dir, base=args.base, dtype=dtype, device=state.device)
    pipe.set_progress_bar_config(disable=True)
    committee, folders, loaded = [], [], {}  # loaded: each classifier folder once
    if args.select or args.pool:
        folders = args.committee or default_committee()
        if args.evaluator.lower() != "none" and any(Path(f).resolve() == Path(args.evaluator).resolve()
                                                     for f in folders):
            raise SystemExit("error: the evaluation classifier judges the set and must not select it: pass other "
                             "--committee folders")
        committee = load_classifiers(folders, state.device, loaded)
        members = committee_key(folders)
    looser = []
    if args.looser_committee:
        if args.evaluator.lower() != "none" and any(Path(f).resolve() == Path(args.evaluator).resolve()
                                                     for f in args.looser_committee):
            raise SystemExit("error: the evaluation classifier judges the set and must not select it: pass other "
                             "--looser-committee folders")
        looser = [(load_classifiers(args.looser_committee, state.device, loaded), committee_key(args.looser_committee))]
    feedback, fb_name = None, ""
    if args.feedback_scale:
        fb_folders = args.feedback_scorer or [str(EMBEDDED / LAYOUT.classifier)]
        if args.evaluator.lower() != "none" and any(Path(f).resolve() == Path(args.evaluator).resolve()
                                                     for f in fb_folders):
            raise SystemExit("error: the evaluation classifier judges the set and must not steer it: pass another "
                             "--feedback-scorer")
        fb_name = feedback_scorer_name(fb_folders)
        try:
            scorers = load_classifiers(fb_folders, state.device, loaded)
            feedback = FeedbackGuidance(scorers[0] if len(scorers) == 1 else tuple(scorers), args.feedback_scale,
                                        args.feedback_steps)
        except (FeedbackError, OSError, ValueError) as e:  # a bad setting, a missing or broken classifier folder
            raise SystemExit(f"error: --feedback-scorer {' '.join(fb_folders)}: {e}") from None
    evaluator = None
    if args.evaluator.lower() != "none":
        evaluator = Classifier.from_pretrained(args.evaluator, device=state.device)
    try:
        prompts = (load_prompt_lists(args.prompts, pipe.class_names) if args.prompts  # read once
                   else model_prompt_lists(model_dir, pipe.class_names))
        plan, extra, subset = build_plan(args, list(pipe.class_names), pipe.prompt_template, prompts)
        anchoring = None if subset is None else Anchoring(
            DEFAULT_STRENGTH if args.strength is None else args.strength, args.anchor_seed)
        if args.calibrated and pipe.calibration is None and anchoring is None:  # edits: checked by their own curve
            raise GenerationError(f"--calibrated needs a calibration curve and {model_dir} has none "
                                  "(train/calibrate.py makes one)")
        sampling = SamplingSettings(args.steps, args.scheduler, args.guidance, args.difficulty_guidance,
                                    args.calibrated)
        if state.is_main_process:
            print(f"{len(plan)} images from {model_dir} into {args.out}: {extra['difficulty']['description']}, "
                  f"{extra['count']}; {state.num_processes} process(es) on {state.device}")
        if feedback is not None:  # its scheduler and classifier checks, before generation.json is written
            feedback.check(pipe, pipe.get_scheduler(sampling.scheduler))
        selection = (Selection(args.max_tries, args.tolerance,
                               not args.no_label_rule, args.pilot, args.pilot_faithful)
                     if args.select else None)
        if args.pool:
            pooling = Pooling(args.pool, args.tolerance, not args.no_label_rule)
            pool_spec = None
            if args.pool_difficulty == "plan":  # the plan's own spec, as build_plan recorded it
                pool_spec = DifficultySpec(**{f.name: extra["difficulty"][f.name] for f in fields(DifficultySpec)})
            pool_plan = make_pool_plan(plan, pipe.class_names, pooling.factor, difficulty=pool_spec,
                                       prompts=prompts, prompt_template=pipe.prompt_template, seed=args.seed)
            anchors = None
            if anchoring is not None:  # a pool of edits
                pool_plan, anchors = anchored(pool_plan, subset, anchoring.seed)
            pool_dir = Path(args.pool_dir or f"{Path(args.out).as_posix().rstrip('/')}-pool")
            if state.is_main_process:
                drawn = pool_spec.describe() if pool_spec else "s ~ U(0, 1)"
                print(f"pool: {len(pool_plan)} images ({drawn}{', edits' if anchors else ''}) into {pool_dir}")
            summary = generate_pooled_set(pipe, plan, args.out, pool_plan=pool_plan, pool_dir=pool_dir,
                                          committee=committee, committee_key=members, pooling=pooling,
                                          anchoring=anchoring, anchors=anchors, pool_difficulty=pool_spec,
                                          pool_donors=args.pool_donors, looser=looser,
                                          feedback=feedback, feedback_scorer=fb_name,
                                          model_id=str(args.model), evaluator=evaluator, sampling=sampling,
                                          batch_size=args.batch_size, extra_config=extra,
                                          real_subset=extra.get("real_subset", {}).get("name", ""),
                                          process_index=state.process_index, num_processes=state.num_processes,
                                          barrier=state.wait_for_everyone, progress=not args.no_progress,
                                          stop_after_chunks=args.stop_after_chunks)
        else:
            plan, anchors = (plan, None) if anchoring is None else anchored(plan, subset, anchoring.seed)
            summary = generate_dataset(pipe, plan, args.out, model_id=str(args.model), evaluator=evaluator,
                                     selection=selection, committee=committee, anchoring=anchoring, anchors=anchors,
                                     feedback=feedback, feedback_scorer=fb_name,
                                     sampling=sampling, batch_size=args.batch_size, extra_config=extra,
                                     real_subset=extra.get("real_subset", {}).get("name", ""),
                                     process_index=state.process_index, num_processes=state.num_processes,
                                     barrier=state.wait_for_everyone, progress=not args.no_progress,
                                     stop_after_chunks=args.stop_after_chunks)
    except (GenerationError, FeedbackError) as e:
        raise SystemExit(f"error: {e}") from None
    if state.is_main_process:
        if summary["complete"]:
            print(json.dumps(summary, indent=1))
        else:
            print(f"stopped before the end; rerun the same command to finish {args.out}")
    return 0 if summary["complete"] or not state.is_main_process else 3


if __name__ == "__main__":
    sys.exit(main())
