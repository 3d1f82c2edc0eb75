#!/usr/bin/env python
"""Does medium-difficulty synthetic data help a classifier? The paper's experiment on Fashion-MNIST,
with reference arms made of real images.

    python train/downstream.py                 # full table (cached: rerun to continue)
    python train/downstream.py --cached-only   # the table from the cells finished so far; trains nothing
    python train/downstream.py --quick         # minutes, tiny settings (tests / CI)
    python train/downstream.py --seeds 0 1 2 3 4 5 6 7 --mus 0.5 0.9 --ratios 0.25

Every cell trains the same architecture for the same number of optimizer steps on the real
subset (default a stratified 10% of the training split) plus an added set, once per seed (the
same seeds in every cell, so differences to real-only are paired), and is tested on the full
test split. The added sets (per class: ratio x the real subset's count):

  dacd            generated at s ~ N(mu, sigma) for each mu (sampling `plain`; with --samplings
                  also `selected`, by a committee, try by try; `pooled`, a pool of --pool-factor x the
                  set at s ~ U(0, 1) measured by the committee once and matched to each mu's plan,
                  label-faithful images first; `anchored`, each image an img2img edit of a
                  real subset image of its class at --strength; and `anchored-pooled`, a pool of
                  such edits matched like `pooled`; with --pool-difficulty plan each mu gets its own
                  pool conditioned on its plan, named `mu-pooled`)
  baseline        the no-difficulty LoRA's images
  real-matched    real images from the unused part of the training split, matched per class
                  to the same s plan as the dacd set (nearest out-of-fold s, without replacement)
  real-random     unused real images at random
  real-duplicate  copies of the subset's own images (what extra steps on the same data give)

plus synthetic-only cells ("alone"): a classifier trained on the added set alone (the size of
the largest ratio's set), the classification accuracy score of a generator. The headline cells
(real-only, real-matched / dacd at the headline mu, baseline) run --headline-seeds, the rest
--seeds; all cells' first seeds run before the headline's extra ones.

Writes to --out: runs.csv (one row per cell and seed), results.csv (per cell: accuracy mean ±
std, paired difference to real-only with a 95% t-interval, paired-t p-value and its Holm
adjustment over the table's "added" cells), per_class.csv (the same per class), confusion.json
(mean confusion matrix per cell), sets.csv (each added set measured by the evaluation
classifier), matched.csv (how far matched real images are from the plan, per class),
results.md and downstream.html. Each (cell, seed) result is cached under <out>/cells (a small
JSON, committed with the table), keyed by a hash of everything it depends on (arm, set plan,
model content, sampling settings, real subset, training settings), so an interrupted table
continues where it stopped and a changed setting never reuses another's cells. Generated
images go to --work-dir, made only when a missing cell needs them.

A set can also be made beforehand, e.g. on GPUs with `accelerate launch train/generate.py`: put
a finished folder where this script would write it (it prints the path).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dacd.calibration import CURVE_FILES
from dacd.classifier import Classifier, load_classifiers
from dacd.data import load_dataset, stratified_subset, subset_name
from dacd.defaults import (DIFFICULTY, EMBEDDED_CHECKPOINT, LAYOUT, PROMPT_TEMPLATE, SAMPLING, default_committee,
                           repo_relative)
from dacd.difficulty import load_scores
from dacd.evaluation import (
    draw_per_class,
    holm,
    match_report,
    match_to_plan,
    measure,
    medium_share,
    paired_comparison,
    per_class_comparison,
    train_downstream_cell,
)
from dacd.feedback import FeedbackGuidance
from dacd.generation import (
    Anchoring,
    DifficultySpec,
    Pooling,
    Selection,
    anchor_images,
    assign_anchors,
    committee_key,
    counts_from_ratio,
    feedback_scorer_name,
    generate_dataset,
    generate_pooled_set,
    load_generated_images,
    load_manifest,
    make_plan,
    make_pool_plan,
    manifest_summary,
    model_prompt_lists,
    plan_fingerprint,
    take_first,
)
from dacd.img2img import DEFAULT_STRENGTH
from dacd.pipeline import DifficultyControlledPipeline
from dacd.sampling import SamplingSettings
from dacd.weights import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]
# A set's model is named by its weights and configs, not by its calibration curves: no set made
# here samples calibrated, so refitting a curve leaves every set, pool and cached cell where it was.
# Cells cached before 2026-11-28 name a dacd folder by a fingerprint that also hashed its curve;
# each shipped dacd's weights-only fingerprint maps to that name, so those cells stay found.
LEGACY_MODEL_IDS = {
    "cbbe1498cf97a4f2": "18c01b7cd5caf904",  # first base, 1,500 steps (the curve of 827091c)
    "73480f72ca2d78be": "77b85f772744194f",  # rebuilt base, 1,500 steps (8a447d5)
    "f751b56269ef1f41": "bda93c8d685d617d",  # rebuilt base, 4,500 steps (e0a68ee; shipped until the v chain)
}
EMBEDDED = EMBEDDED_CHECKPOINT
CACHE_VERSION = 2  # v1 caches (before the reference arms) are not read: their keys differ
RESULT_COLUMNS = ["cell", "model", "sampling", "mode", "mu", "ratio", "seeds", "accuracy_mean", "accuracy_std",
                  "paired_seeds", "diff_mean", "diff_ci_low", "diff_ci_high", "significant", "p_value", "p_holm",
                  "holm_significant", "n_real", "n_synthetic", "measured_medium_share", "evaluator_accuracy"]
RUN_COLUMNS = ["cell", "model", "sampling", "mode", "mu", "ratio", "seed", "accuracy", "n_real", "n_synthetic",
               "steps", "seconds"]
REAL_ARMS = ("real-matched", "real-random", "real-duplicate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--scores", default=str(EMBEDDED / LAYOUT.scores),
                   help="out-of-fold difficulty of the training split (for real-matched)")
    p.add_argument("--real-fraction", type=float, default=0.1, help="stratified fraction of the training split")
    p.add_argument("--real-seed", type=int, default=0)
    p.add_argument("--model", default=str(EMBEDDED / LAYOUT.dacd))
    p.add_argument("--baseline", default=str(EMBEDDED / LAYOUT.baseline), help="'' to leave the baseline out")
    p.add_argument("--evaluator", default=str(EMBEDDED / LAYOUT.evaluator))
    p.add_argument("--mus", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--sigma", type=float, default=DIFFICULTY.sigma)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--arms", nargs="+", default=["dacd", "baseline", *REAL_ARMS, "alone"],
                   help="which arms to run ('alone' = the synthetic-only cells)")
    p.add_argument("--samplings", nargs="+", default=["plain"], choices=list(SAMPLINGS),
                   help="how dacd sets are made: plain sampling, selected by a committee (train/generate.py "
                        "--select), anchored on real subset images (train/generate.py --anchor real), pooled: "
                        "matched from a committee-measured pool (train/generate.py --pool; one for every mu unless "
                        "--pool-difficulty plan), anchored-pooled: "
                        "a pool of edits of real subset images (--pool with --anchor real)")
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH, help="anchored / anchored-pooled: img2img "
                   "strength")
    p.add_argument("--anchor-seed", type=int, default=0, help="anchored / anchored-pooled: order of a class's real "
                   "images")
    p.add_argument("--max-tries", type=int, default=Selection.max_tries, help="selected: tries per image")
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"selected / (anchored-)pooled: |committee s - plan| (default {Selection.tolerance:g} "
                        f"selected, {Pooling.tolerance:g} pooled, where it only marks `accepted`)")
    p.add_argument("--no-label-rule", action="store_true",
                   help="selected / (anchored-)pooled: accept images that a member misclassifies")
    p.add_argument("--pilot", type=int, default=Selection.pilot,
                   help="selected: pilot images per class and grid value fitting per-class conditioning (0: none)")
    p.add_argument("--pilot-faithful", action="store_true",
                   help="selected: fit the pilot on label-faithful images only")
    p.add_argument("--pool-factor", type=int, default=Pooling.factor,
                   help="(anchored-)pooled: pool images per planned image (one pool, at the largest ratio, serves "
                        "every mu, unless --pool-difficulty plan)")
    p.add_argument("--pool-difficulty", choices=["uniform", "plan"], default="uniform",
                   help="(anchored-)pooled: the pool's conditioning, s ~ U(0, 1) (one pool for every mu) or each "
                        "mu's own plan spec (a pool per mu; its sets are named 'mu-pooled', e.g. 'dacd mu-pooled "
                        "g1d1')")
    p.add_argument("--committee", nargs="+", default=default_committee(),
                   help="selected / (anchored-)pooled: scoring classifiers that select (never the evaluator); "
                        "another committee than the default tags its sets' names with its size, e.g. "
                        "'mu-pooled-c3'")
    p.add_argument("--looser-committee", nargs="+", default=None, metavar="FOLDER",
                   help="(anchored-)pooled: a looser committee for the tiered label rule (the --committee's "
                        "faithful image within --tolerance, else this one's, else the nearest faithful: "
                        "dacd.generation.match_tiered); tags the sets' names with 't<members>', e.g. "
                        "'mu-pooled-c3t2'")
    p.add_argument("--feedback-scale", type=float, default=0.0,
                   help="pooled: steer every pool image towards its own requested s by the gradient of "
                        "--feedback-scorer's mean s on the first --feedback-steps steps (dacd.feedback; 0: off); "
                        "tags the sets' names with 'fb<scale>', e.g. 'mu-pooled-c3fb2'")
    p.add_argument("--feedback-steps", type=int, default=5, help="pooled with --feedback-scale: steered steps")
    p.add_argument("--feedback-scorer", nargs="+", default=None, metavar="FOLDER",
                   help="pooled with --feedback-scale: the classifiers whose mean s steers (default: --committee)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--headline-seeds", type=int, nargs="+", default=list(range(10)),
                   help="seeds of real-only and of real-matched, dacd and baseline at --headline-mu")
    p.add_argument("--headline-mu", type=float, default=DIFFICULTY.mu)
    p.add_argument("--arch", default="resnet10t", help="timm architecture of the downstream classifier")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps, the same for every cell")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gen-steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[SAMPLING.guidance_scale],
                   help="text guidance of the generated sets (dacd and baseline): one set per scale; a scale "
                        f"other than the default ({SAMPLING.guidance_scale:g}) is named in its cells, e.g. "
                        "'baseline g2 r=0.25'")
    p.add_argument("--difficulty-guidance", type=float, default=None,
                   help=f"difficulty guidance of the dacd sets (default {SAMPLING.difficulty_guidance_scale:g}); "
                        "with --guidance-scales 1 and 1 here, sampling is unguided (one U-Net branch); a value "
                        "other than the default is named in the cells, e.g. 'dacd pooled g1d1'")
    p.add_argument("--gen-batch-size", type=int, default=50)
    p.add_argument("--gen-seed", type=int, default=0)
    p.add_argument("--arm-seed", type=int, default=0, help="seed of real-random and real-duplicate draws")
    p.add_argument("--work-dir", default="runs/downstream", help="generated sets (large; not committed)")
    p.add_argument("--out", default=None, help="default bench/results/downstream[-quick]")
    p.add_argument("--cells-dir", default=None, help="cached cell results (small; default <out>/cells, committed "
                   "with the table so a later run or session continues it)")
    p.add_argument("--cached-only", action="store_true",
                   help="train and generate nothing: the table from the cells already cached")
    p.add_argument("--quick", action="store_true",
                   help="2%% real subset, mu 0.5 and 0.9, ratio 0.25, 2 seeds, 30 steps, 4 sampling steps")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.real_fraction, args.mus, args.ratios, args.seeds = 0.02, [0.5, 0.9], [0.25], [0, 1]
        args.headline_seeds = args.seeds
        args.steps, args.gen_steps = 30, args.gen_steps or 4
        if args.work_dir == "runs/downstream":
            args.work_dir = "runs/downstream-quick"
    unknown = sorted(set(args.arms) - {"dacd", "baseline", *REAL_ARMS, "alone"})
    if unknown:
        p.error(f"unknown arms {unknown}; choose from dacd, baseline, {', '.join(REAL_ARMS)}, alone")
    if args.looser_committee and not {"pooled", "anchored-pooled"} & set(args.samplings):
        p.error("--looser-committee is a label rule of pooled sets: add --samplings pooled (or anchored-pooled)")
    if args.looser_committee and args.no_label_rule:
        p.error("--looser-committee is a label rule: leave out --no-label-rule")
    judge = Path(args.evaluator).resolve()
    if any(Path(f).resolve() == judge for f in [*args.committee, *(args.looser_committee or [])]):
        p.error("the evaluation classifier judges the sets and must not select them: pass other --committee / "
                "--looser-committee folders")
    if args.feedback_scale and not (args.feedback_scale > 0 and "pooled" in args.samplings):
        p.error("--feedback-scale steers pools: a scale > 0 with --samplings pooled (edits take no feedback)")
    if args.feedback_scorer and not args.feedback_scale:
        p.error("--feedback-scorer steers with --feedback-scale: add a scale > 0")
    args.feedback_scorer = args.feedback_scorer or list(args.committee)
    if args.feedback_scale and any(Path(f).resolve() == judge for f in args.feedback_scorer):
        p.error("the evaluation classifier judges the sets and must not steer them: pass other --feedback-scorer "
                "folders")
    if args.pool_difficulty != "uniform" and not {"pooled", "anchored-pooled"} & set(args.samplings):
        p.error("--pool-difficulty applies to pooled sets: add --samplings pooled (or anchored-pooled)")
    if not args.baseline and "baseline" in args.arms:
        args.arms = [a for a in args.arms if a != "baseline"]
    args.out = Path(args.out or ROOT / "bench" / "results" / ("downstream-quick" if args.quick else "downstream"))
    return args


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recorded_setting(value):
    """A setting as settings.json records it: folders and files (given as paths or as strings naming
    one that exists, e.g. the default --model and --committee) through dacd.defaults.repo_relative, so
    the committed file does not name this machine's paths; lists element by element; anything else as
    it is."""
    if isinstance(value, (list, tuple)):
        return [recorded_setting(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and value and Path(value).exists()):
        return repo_relative(value)
    return value


def prompt_template(model) -> str:
    """The prompt template a dacd folder was trained with (its dacd_config.json)."""
    cfg = Path(model) / LAYOUT.dacd_config
    return json.loads(cfg.read_text()).get("prompt_template", PROMPT_TEMPLATE) if cfg.is_file() else PROMPT_TEMPLATE


# ---------------------------------------------------------------- the added sets

SAMPLINGS = ("plain", "selected", "anchored", "pooled", "anchored-pooled")


def guidance_tag(scale: float, difficulty: float | None = None) -> str:
    """'' for the project's guidance scales, else e.g. 'g2', or 'g1d1' with a difficulty guidance
    other than the project's (in set and cell names)."""
    d = "" if difficulty in (None, SAMPLING.difficulty_guidance_scale) else f"d{difficulty:g}"
    return ("" if scale == SAMPLING.guidance_scale and not d else f"g{scale:g}") + d


def sampling_label(args, mode: str) -> str:
    """A sampling's name in set and cell names: pooled sets with a pool per mu (--pool-difficulty
    plan) are 'mu-pooled' / 'anchored-mu-pooled'; a committee-measured sampling (selected, pooled)
    with another --committee than the shipped two gets '-c<members>', e.g. 'mu-pooled-c3', so its
    cells stand beside the default committee's in one table (folders and cells differ anyway: the
    committee is part of their identity). A pooled sampling with a --looser-committee gets
    't<members>' after that, e.g. 'mu-pooled-c3t2' (or 'pooled-t1'), and pools steered by feedback
    'fb<scale>', e.g. 'mu-pooled-c3fb2'."""
    per_mu = mode in ("pooled", "anchored-pooled") and args.pool_difficulty == "plan"
    label = mode.replace("pooled", "mu-pooled") if per_mu else mode
    tag = ""
    if mode in ("selected", "pooled", "anchored-pooled") and not _same_committee(args.committee):
        tag = f"c{len(args.committee)}"
    if mode in ("pooled", "anchored-pooled") and args.looser_committee:
        tag += f"t{len(args.looser_committee)}"
    if mode == "pooled" and args.feedback_scale:
        tag += f"fb{args.feedback_scale:g}"
    return f"{label}-{tag}" if tag else label


def _same_committee(folders) -> bool:
    """Whether `folders` hold the shipped committee (by content, in its order: a copy is the same)."""
    if [Path(x).resolve() for x in folders] == [Path(x).resolve() for x in default_committee()]:
        return True
    return _fingerprints(tuple(map(str, folders))) == _fingerprints(tuple(default_committee()))


def model_identity(model) -> str:
    """What names a model in set and pool identities: its fingerprint without calibration curves
    (LEGACY_MODEL_IDS for the shipped dacd folders whose cells were cached before). A copy of a
    folder, with or without another curve, names the same sets; generation.json records the model's
    path, so a set left unfinished by one copy is resumed only from that copy."""
    fp = model_fingerprint(model, skip=CURVE_FILES)
    return LEGACY_MODEL_IDS.get(fp, fp)


@functools.lru_cache(maxsize=None)
def _fingerprints(folders: tuple[str, ...]) -> tuple[str, ...]:
    """The members' content fingerprints, read once per run (set names and identities ask often)."""
    return tuple(model_fingerprint(x) for x in folders)


def plan_sets(args, real, counts) -> dict:
    """Every added set, by name: what it is and what identifies it (no images yet)."""

    sets = {}

    def generated(arm, model, spec, mu, mode="plain", guidance=SAMPLING.guidance_scale):
        prompts = model_prompt_lists(model, real.class_names)  # a confuser-prompt model's captions, else None
        plan = make_plan(real.class_names, counts, spec, prompts=prompts, prompt_template=prompt_template(model),
                         seed=args.gen_seed)
        dg = args.difficulty_guidance if arm == "dacd" else None  # the baseline has no difficulty branch
        settings = SamplingSettings(num_inference_steps=args.gen_steps, guidance_scale=guidance,
                                    difficulty_guidance_scale=dg)
        ident = {"arm": arm, "model": model_identity(model), "sampling": mode, "settings": settings.as_config(),
                 "plan": plan_fingerprint(plan)}
        selection = anchoring = pooling = None
        label = sampling_label(args, mode)
        if mode in ("pooled", "anchored-pooled"):  # one pool per (model, settings), shared by every mu,
            pooling = Pooling(args.pool_factor, args.tolerance, not args.no_label_rule)  # or one per mu
            per_mu = args.pool_difficulty == "plan"
            pool_plan = make_pool_plan(plan, real.class_names, pooling.factor, prompts=prompts,
                                       prompt_template=prompt_template(model), seed=args.gen_seed,
                                       difficulty=spec if per_mu else None)
            pool_ident = {"model": ident["model"], "settings": ident["settings"]}
            if mode == "anchored-pooled":  # a pool of edits of the subset's images
                anchoring = Anchoring(args.strength, args.anchor_seed)
                pool_plan = assign_anchors(pool_plan, real.ids, real.labels, anchoring.seed)
                pool_ident["anchoring"] = asdict(anchoring)
                ident["anchoring"] = asdict(anchoring)
            if mode == "pooled" and args.feedback_scale:  # a steered pool (absent otherwise: old identities stay)
                pool_ident["feedback"] = {"scale": float(args.feedback_scale), "steps": int(args.feedback_steps),
                                          "scorers": list(_fingerprints(tuple(map(str, args.feedback_scorer))))}
                ident["feedback"] = pool_ident["feedback"]
            pool_ident["plan"] = plan_fingerprint(pool_plan)
            ident.update(pooling=asdict(pooling), committee=list(_fingerprints(tuple(map(str, args.committee)))),
                         pool=_hash(pool_ident))
            if args.looser_committee:  # (absent otherwise: the sets made before it keep their identity)
                ident["looser_committee"] = list(_fingerprints(tuple(map(str, args.looser_committee))))
            tag = "".join(f"-{x}" for x in ("anchored" if anchoring is not None else "", "mu" if per_mu else "",
                                            guidance_tag(guidance, dg),
                                            f"fb{args.feedback_scale:g}" if "feedback" in pool_ident else "") if x)
            pool = {"plan": pool_plan, "folder": Path(args.work_dir) / "synthetic" /
                    f"pool-{arm}{tag}-{_hash(pool_ident)[:8]}", "difficulty": spec if per_mu else None}
        if mode == "selected":
            selection = Selection(args.max_tries, args.tolerance, not args.no_label_rule, args.pilot,
                                  args.pilot_faithful)
            ident.update(selection=asdict(selection), committee=list(_fingerprints(tuple(map(str, args.committee)))))
        if mode == "anchored":  # real subset images of the row's class, deterministic (the plan records them)
            anchoring = Anchoring(args.strength, args.anchor_seed)
            plan = assign_anchors(plan, real.ids, real.labels, anchoring.seed)
            ident.update(anchoring=asdict(anchoring), plan=plan_fingerprint(plan))
        g = guidance_tag(guidance, dg)
        name = f"{arm}-{label}" + (f"-{g}" if g else "") + (f"-mu{mu:g}" if mu is not None else "")
        sets[name] = {"name": name, "arm": arm, "mu": mu, "sampling": f"{label} {g}".strip(), "kind": "generated",
                      "plan": plan, "model": model, "spec": spec, "identity": _hash(ident), "selection": selection,
                      "anchoring": anchoring, "pooling": pooling, "pool": pool if pooling else None,
                      "settings": settings, "feedback": ident.get("feedback"),
                      "folder": Path(args.work_dir) / "synthetic" / f"{name}-{_hash(ident)[:8]}"}

    for mu in args.mus:
        spec = DifficultySpec(mu=mu, sigma=args.sigma)
        if "dacd" in args.arms:
            for mode in args.samplings:
                for gs in args.guidance_scales:
                    generated("dacd", args.model, spec, mu, mode, gs)
        if "real-matched" in args.arms:
            plan = make_plan(real.class_names, counts, spec, prompt_template=prompt_template(args.model),
                             seed=args.gen_seed)
            sets[f"real-matched-mu{mu:g}"] = {"name": f"real-matched-mu{mu:g}", "arm": "real-matched", "mu": mu,
                                              "sampling": "", "kind": "real", "plan": plan}
    if "baseline" in args.arms:  # the plan's s is recorded, not used
        for gs in args.guidance_scales:
            generated("baseline", args.baseline, DifficultySpec(mu=DIFFICULTY.mu, sigma=args.sigma), None,
                      guidance=gs)
    for arm in ("real-random", "real-duplicate"):
        if arm in args.arms:
            sets[arm] = {"name": arm, "arm": arm, "mu": None, "sampling": "", "kind": "real"}
    return sets


def build_real_sets(args, sets, real, pool, pool_s, counts) -> list:
    """Pick the real images of each real arm (at the largest ratio); returns match-report frames."""

    reports = []
    for st in sets.values():
        if st["kind"] != "real":
            continue
        if st["arm"] == "real-matched":
            plan = st["plan"]
            pick = match_to_plan(pool_s, pool.labels, plan.requested_s.to_numpy(), plan.label.to_numpy())
            src, order_s = pool, pool_s[pick]
            st["requested_s"] = plan.requested_s.to_numpy()
            rep = match_report(st["requested_s"], order_s, plan.label.to_numpy(), real.class_names)
            reports.append(rep.assign(set=st["name"], mu=st["mu"]))
        elif st["arm"] == "real-random":
            pick, src = draw_per_class(pool.labels, counts, args.arm_seed), pool
        else:
            pick, src = draw_per_class(real.labels, counts, args.arm_seed, cycle=True), real
        st.update(images=src.images[pick], labels=src.labels[pick], ids=np.asarray(src.ids)[pick],
                  scoring_s=pool_s[pick] if src is pool else None)
        st["identity"] = _hash({"arm": st["arm"], "ids": [str(i) for i in st["ids"]]})
    return reports


def make_generated_sets(args, sets, real, needed: set, progress: bool) -> None:
    """Generate (or resume) each generated set that a missing cell needs, at the largest ratio."""

    pipes, evaluator, committee, looser, feedback, loaded = {}, None, None, [], None, {}  # loaded: each folder once
    for st in sets.values():
        if st["kind"] != "generated" or st["name"] not in needed or (st["folder"] / "manifest.parquet").is_file():
            continue
        model = st["model"]
        if model not in pipes:
            pipes[model] = DifficultyControlledPipeline.from_pretrained(model)
            pipes[model].set_progress_bar_config(disable=True)
        pipe = pipes[model]
        if list(pipe.class_names) != list(real.class_names):
            raise SystemExit(f"{model} knows classes {list(pipe.class_names)}, the data {list(real.class_names)}")
        evaluator = evaluator or Classifier.from_pretrained(args.evaluator)
        if (st["selection"] is not None or st["pooling"] is not None) and committee is None:
            committee = load_classifiers(args.committee, loaded=loaded)
            looser = ([(load_classifiers(args.looser_committee, loaded=loaded), committee_key(args.looser_committee))]
                      if args.looser_committee else [])
        print(f"generating {st['name']}: {len(st['plan'])} images ({st['spec'].describe()}) from {model} "
              f"into {st['folder']}", flush=True)
        anchors = None
        if st["anchoring"] is not None:  # the pool's anchors, or the set's own
            anchors = anchor_images(st["pool"]["plan"] if st["pooling"] is not None else st["plan"], real.ids,
                                    real.images)
        if st["feedback"] is not None and feedback is None:  # steered pools: the scorers' gradient
            feedback = FeedbackGuidance(tuple(load_classifiers(args.feedback_scorer, loaded=loaded)),
                                        args.feedback_scale, args.feedback_steps)
        if st["pooling"] is not None:
            # feedback needs gradients, which inference mode forbids even inside enable_grad
            with torch.inference_mode(st["feedback"] is None):
                done = generate_pooled_set(pipe, st["plan"], st["folder"], pool_plan=st["pool"]["plan"],
                                    pool_dir=st["pool"]["folder"], committee=committee,
                                    committee_key=committee_key(args.committee),
                                    pooling=st["pooling"], model_id=model, evaluator=evaluator,
                                    anchoring=st["anchoring"], anchors=anchors,
                                    pool_difficulty=st["pool"]["difficulty"],
                                    pool_donors=pool_donors(st["pool"]["folder"], model_identity(model)),
                                    looser=looser,
                                    **({} if st["feedback"] is None else
                                       {"feedback": feedback,
                                        "feedback_scorer": feedback_scorer_name(args.feedback_scorer)}),
                                    sampling=st["settings"], batch_size=args.gen_batch_size, progress=progress,
                                    real_subset=real.name,
                                    extra_config={"difficulty": {**st["spec"].__dict__,
                                                                 "description": st["spec"].describe()},
                                                  "real_subset": real.name, "ratio": max(args.ratios),
                                                  "sampling_mode": st["sampling"]})
            if done.get("pool_reused"):
                print(f"  {done['pool_reused']} pool images taken from smaller pools of its kind", flush=True)
            load_manifest(st["folder"])
            continue
        with torch.inference_mode():
            generate_dataset(pipe, st["plan"], st["folder"], model_id=model, evaluator=evaluator,
                             selection=st["selection"], committee=committee if st["selection"] else (),
                             anchoring=st["anchoring"], anchors=anchors,
                             sampling=st["settings"],
                             batch_size=args.gen_batch_size, progress=progress, real_subset=real.name,
                             extra_config={"difficulty": {**st["spec"].__dict__, "description": st["spec"].describe()},
                                           "real_subset": real.name, "ratio": max(args.ratios),
                                           "sampling_mode": st["sampling"]})
        load_manifest(st["folder"])


def pool_donors(folder: Path, model_fp: str) -> list[Path]:
    """The finished pools beside `folder` of its kind (arm, anchoring, pool per mu, guidance: its name
    without the hash) made by the same model weights (`model_fp`; checked by recomputing the donor's
    folder hash from its generation.json, as `plan_sets` names pools): a bigger pool takes the rows it
    shares with them instead of sampling them again (e.g. --pool-factor 24 after 12 at the same mu:
    its first 12 per planned image). A checkpoint rebuilt in place leaves its old pools beside the
    new ones; they are not donors."""
    kind, out = folder.name.rsplit("-", 1)[0], []
    for f in sorted(folder.parent.glob(f"{kind}-*")):
        name, _, tag = f.name.rpartition("-")
        cfg = f / "generation.json"
        if f == folder or name != kind or not (f / "manifest.parquet").is_file() or not cfg.is_file():
            continue
        cfg = json.loads(cfg.read_text())
        ident = {"model": model_fp, "settings": cfg.get("sampling"), "plan": cfg.get("plan_fingerprint")}
        if cfg.get("anchoring"):
            ident["anchoring"] = cfg["anchoring"]
        if _hash(ident)[:8] == tag:
            out.append(f)
    return out


def set_images(st, counts, real):
    """(images, labels) of a set's first `counts[c]` images per class."""

    if st["kind"] == "generated":
        m = take_first(load_manifest(st["folder"]), counts)
        return load_generated_images(st["folder"], m), np.array([real.class_index(c) for c in m["class"]])
    keep = np.concatenate([np.flatnonzero(st["labels"] == c)[:n] for c, n in sorted(counts.items())])
    return st["images"][keep], st["labels"][keep]


def measure_sets(args, sets, real, cells_dir: Path) -> list[dict]:
    """Each set's summary, measured by the evaluation classifier (real arms too, so they compare).
    Summaries are cached beside the cells, so a table can be rebuilt without the images."""

    rows, evaluator = [], None
    for st in sets.values():
        row = {"set": st["name"], "arm": st["arm"], "sampling": st["sampling"], "mu": st["mu"]}
        cache = cells_dir / f"set-{st['name']}-{st['identity']}.json"
        if cache.is_file():
            rows.append(json.loads(cache.read_text()))
            continue
        if st["kind"] == "generated":
            if (st["folder"] / "manifest.parquet").is_file():
                row.update({k: v for k, v in manifest_summary(load_manifest(st["folder"])).items()
                            if k != "medium_band"})
        else:
            evaluator = evaluator or Classifier.from_pretrained(args.evaluator)
            m, _ = measure(evaluator, st["images"], st["labels"])
            s = m.measured_s.to_numpy()
            row.update(images=int(len(s)), measured_s_mean=float(s.mean()), measured_medium_share=medium_share(s),
                       evaluator_accuracy=float((m.pred.to_numpy() == st["labels"]).mean()))
            if "requested_s" in st:
                row.update(requested_s_mean=float(np.mean(st["requested_s"])),
                           requested_medium_share=medium_share(st["requested_s"]))
            if st["scoring_s"] is not None:
                row.update(scoring_s_mean=float(np.mean(st["scoring_s"])),
                           scoring_medium_share=medium_share(st["scoring_s"]))
        if "images" in row:
            cache.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the cells

def cell_specs(args, sets) -> list[dict]:
    """All cells in table order; each knows its set, mode and seeds."""
    head = set(args.headline_seeds) | set(args.seeds)
    cells = [{"cell": "real-only", "model": "", "sampling": "", "mode": "real", "mu": float("nan"), "ratio": 0.0,
              "set": None, "headline": True}]
    nan = float("nan")

    def generated_arms(arm, mode, mu=None):  # (cell label, set name) per guidance scale
        tags = [guidance_tag(gs, args.difficulty_guidance if arm == "dacd" else None) for gs in args.guidance_scales]
        mode = sampling_label(args, mode) if arm == "dacd" else mode
        return [(" ".join(x for x in (arm, "" if mode == "plain" else mode, g) if x),
                 f"{arm}-{mode}" + (f"-{g}" if g else "") + (f"-mu{mu:g}" if mu is not None else "")) for g in tags]

    for r in args.ratios:
        for mu in args.mus:
            arms = [a for mode in args.samplings for a in generated_arms("dacd", mode, mu)]
            for label, name in arms + [("real-matched", f"real-matched-mu{mu:g}")]:
                if name in sets:
                    cells.append({"cell": f"{label} mu={mu:g} r={r:g}", "model": sets[name]["arm"],
                                  "sampling": sets[name]["sampling"], "mode": "added", "mu": mu, "ratio": r,
                                  "set": name, "headline": mu == args.headline_mu})
        for label, name in generated_arms("baseline", "plain") + [("real-random", "real-random"),
                                                                   ("real-duplicate", "real-duplicate")]:
            if name in sets:
                arm = sets[name]["arm"]
                cells.append({"cell": f"{label} r={r:g}", "model": arm, "sampling": sets[name]["sampling"],
                              "mode": "added", "mu": nan, "ratio": r, "set": name, "headline": arm == "baseline"})
    if "alone" in args.arms:
        r = max(args.ratios)
        mu_h = f"mu={args.headline_mu:g}"
        alone = [(name, f"{label} {mu_h}") for mode in SAMPLINGS
                 for label, name in generated_arms("dacd", mode, args.headline_mu)]
        alone += [(name, label) for label, name in generated_arms("baseline", "plain")]
        for name, label in alone + [(f"real-matched-mu{args.headline_mu:g}", f"real-matched {mu_h}"),
                                    ("real-random", "real-random")]:
            if name in sets:
                st = sets[name]
                cells.append({"cell": f"alone: {label} r={r:g}", "model": st["arm"], "sampling": st["sampling"],
                              "mode": "alone", "mu": nan if st["mu"] is None else st["mu"], "ratio": r, "set": name,
                              "headline": False})
    for c in cells:
        c["seeds"] = sorted(head) if c["headline"] else list(args.seeds)
    return cells


def work_order(cells, first_seeds) -> list[tuple[dict, int]]:
    """Every cell's first seeds (real-only, then headline cells, largest ratio first), then the
    headline cells' extra seeds: a run stopped early still gives a table of every arm."""
    ranked = sorted(cells, key=lambda c: (c["set"] is not None, not c["headline"], c["mode"] == "alone", -c["ratio"]))
    first = [(c, s) for c in ranked for s in c["seeds"] if s in first_seeds]
    return first + [(c, s) for c in ranked for s in c["seeds"] if s not in first_seeds]


def cell_meta(args, cell, sets, real, test) -> dict:
    """Everything a cell's result depends on; its hash is part of the cache file name."""
    return {"version": CACHE_VERSION, "cell": cell["cell"], "mode": cell["mode"], "ratio": cell["ratio"],
            "real_subset": real.name, "test": f"{test.name}:{len(test)}", "arch": args.arch, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr,
            "set": sets[cell["set"]]["identity"] if cell["set"] else None}


def cache_path(cells_dir: Path, cell, seed, meta) -> Path:
    slug = cell["cell"].replace(": ", "-").replace(" ", "_").replace("=", "")
    return cells_dir / f"{slug}-seed{seed}-{_hash(meta)}.json"


def main(argv=None):
    args = parse_args(argv)

    t_start = time.time()
    progress = not args.no_progress
    cells_dir = Path(args.cells_dir or args.out / "cells")
    cells_dir.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(args.data, "train", args.data_dir), load_dataset(args.data, "test", args.data_dir)
    idx = stratified_subset(train.labels, args.real_fraction, args.real_seed)
    real = train.subset(idx)
    real.name = subset_name(train.name, "train", args.real_fraction, args.real_seed)
    pool = train.subset(np.setdiff1d(np.arange(len(train)), idx))
    print(f"real subset: {real.name}, {len(real)} images; unused pool {len(pool)}; test: {len(test)} images",
          flush=True)
    counts = counts_from_ratio(real.labels, max(args.ratios), real.num_classes)
    sets = plan_sets(args, real, counts)
    reports = []
    if any(st["kind"] == "real" for st in sets.values()):
        scores = load_scores(args.scores).set_index("id")
        missing = [i for i in pool.ids[:5] if i not in scores.index]
        if missing:
            raise SystemExit(f"{args.scores} has no score for training images such as {missing[0]!r}: pass the "
                             "score table of this dataset (--scores; train/score_difficulty.py writes it)")
        pool_s = scores.loc[list(pool.ids), "s"].to_numpy(float)
        reports = build_real_sets(args, sets, real, pool, pool_s, counts)
    cells = cell_specs(args, sets)
    todo = work_order(cells, set(args.seeds))
    caches = [cache_path(cells_dir, c, seed, cell_meta(args, c, sets, real, test)) for c, seed in todo]
    if not args.cached_only:
        needed = {c["set"] for (c, _), cache in zip(todo, caches) if c["set"] and not cache.is_file()}
        make_generated_sets(args, sets, real, needed, progress)
    results, loaded = {}, {}
    for i, ((cell, seed), cache) in enumerate(zip(todo, caches)):
        meta = cell_meta(args, cell, sets, real, test)
        if cache.is_file():
            results[cell["cell"], seed] = json.loads(cache.read_text())
            continue
        if args.cached_only:
            continue
        synth_x = synth_y = None
        if cell["set"] is not None:
            key = (cell["set"], cell["ratio"])
            if key not in loaded:
                loaded[key] = set_images(sets[cell["set"]], counts_from_ratio(real.labels, cell["ratio"],
                                                                              real.num_classes), real)
            synth_x, synth_y = loaded[key]
        res = train_downstream_cell(real.images, real.labels, synth_x, synth_y, test.images, test.labels,
                                    arch=args.arch, class_names=list(real.class_names), steps=args.steps,
                                    seed=seed, batch_size=args.batch_size, lr=args.lr,
                                    include_real=cell["mode"] != "alone", progress=progress)
        res["meta"] = meta
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, cache)
        results[cell["cell"], seed] = res
        print(f"[{i + 1}/{len(todo)}] {cell['cell']:<28} seed {seed}: accuracy {res['accuracy']:.4f} "
              f"({res['n_real']} real + {res['n_synthetic']} added, {res['seconds']:.0f} s)", flush=True)
    print(f"{len(results)} of {len(todo)} cell runs done", flush=True)
    if not any(cell == "real-only" for cell, _ in results):
        print("no real-only result yet: nothing to compare; rerun without --cached-only", flush=True)
        return 0

    run_rows, pc_rows, confusion = [], [], {}
    for cell in cells:
        mats = []
        for seed in cell["seeds"]:
            res = results.get((cell["cell"], seed))
            if res is None:
                continue
            run_rows.append({**{k: cell[k] for k in ("cell", "model", "sampling", "mode", "mu", "ratio")},
                             "seed": seed, **{k: res[k] for k in ("accuracy", "n_real", "n_synthetic", "steps",
                                                                  "seconds")}})
            pc_rows += [{"cell": cell["cell"], "seed": seed, "class": name, "accuracy": a}
                        for name, a in zip(real.class_names, res["per_class_accuracy"])]
            mats.append(np.asarray(res["confusion"], float))
        if mats:
            confusion[cell["cell"]] = np.mean(mats, 0).round(2).tolist()
    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    table = paired_comparison(runs)
    info = runs.groupby("cell", sort=False).agg(**{k: (k, "first") for k in ("model", "sampling", "mode", "mu",
                                                                                "ratio", "n_real", "n_synthetic")})
    table = table.join(info, on="cell")
    family = (table["mode"] == "added").to_numpy()  # the hypotheses of the table: added sets vs real-only
    table["p_holm"] = np.nan
    table.loc[family, "p_holm"] = holm(table.loc[family, "p_value"].to_numpy())
    table["holm_significant"] = (table.p_holm < 0.05).fillna(False).astype(bool)
    set_rows = [r for r in measure_sets(args, sets, real, cells_dir) if "images" in r]  # made sets only
    by_set = {r["set"]: r for r in set_rows}
    set_of = {c["cell"]: c["set"] for c in cells}
    for col in ("measured_medium_share", "evaluator_accuracy"):
        table[col] = [by_set.get(set_of[name], {}).get(col, float("nan")) for name in table.cell]
    table = table[RESULT_COLUMNS]
    per_class = per_class_comparison(pd.DataFrame(pc_rows))

    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "runs.csv", index=False)
    table.to_csv(args.out / "results.csv", index=False)
    per_class.to_csv(args.out / "per_class.csv", index=False)
    pd.DataFrame(set_rows).to_csv(args.out / "sets.csv", index=False)
    if reports:
        pd.concat(reports, ignore_index=True).to_csv(args.out / "matched.csv", index=False)
    (args.out / "confusion.json").write_text(json.dumps({"class_names": list(real.class_names),
                                                         "rows_true_columns_predicted": confusion}, indent=1))
    write_figure(table, per_class, args.out / "downstream.html", real.name)
    with open(args.out / "settings.json", "w") as f:
        json.dump({k: recorded_setting(v) for k, v in vars(args).items()}, f, indent=1)

    pd.set_option("display.width", 250)
    print(f"\nreal subset {real.name} ({len(real)} images), {args.arch}, {args.steps} steps x {args.batch_size}; "
          f"test accuracy on {len(test)} images; {int(family.sum())} comparisons in the Holm family")
    show = _formatted(table)
    print(show[["cell", "seeds", "accuracy", "paired_diff", "p_holm", "n_synthetic", "medium",
                "eval_acc"]].to_string(index=False))
    write_markdown(show, per_class, args, real, len(test), int(family.sum()))
    if reports:
        rep = pd.concat(reports, ignore_index=True)
        print("\nreal-matched: how far the matched real images' out-of-fold s is from the plan, per class")
        print(rep.pivot(index="class", columns="set", values="gap_mean").to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nadded sets (measured by the evaluation classifier):")
    print(pd.DataFrame(set_rows).drop(columns=["sampling"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nwrote {args.out}/runs.csv, results.csv, per_class.csv, sets.csv, matched.csv, confusion.json, "
          f"results.md, downstream.html in {time.time() - t_start:.0f} s")
    return 0


def _formatted(table):
    return table.assign(
        accuracy=[f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(table.accuracy_mean, table.accuracy_std)],
        paired_diff=[f"{d * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]" for d, lo, hi in
                     zip(table.diff_mean, table.diff_ci_low, table.diff_ci_high)],
        p_holm=["—" if p != p else f"{p:.3g}" for p in table.p_holm],
        medium=["—" if x != x else f"{x:.3f}" for x in table.measured_medium_share],
        eval_acc=["—" if x != x else f"{x * 100:.1f}" for x in table.evaluator_accuracy])


def write_markdown(show, per_class, args, real, n_test: int, family: int) -> None:
    """results.md: the tables as printed, for the README."""
    lines = [f"Real subset: {real.name} ({len(real)} images); {args.arch}, {args.steps} steps x {args.batch_size} "
             f"for every cell; test accuracy on {n_test} test images. Holm correction over the {family} "
             "cells that add a set to the real subset.", "",
             "| cell | seeds | test accuracy % (mean ± std) | paired difference to real-only, points [95% CI] | "
             "Holm-adjusted p | added images | set's medium-band share | evaluator accuracy on the set % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in show.itertuples():
        diff = "—" if r.cell == "real-only" else r.paired_diff + (" ✱" if r.holm_significant else "")
        lines.append(f"| {r.cell} | {r.seeds} | {r.accuracy} | {diff} | {r.p_holm} | {r.n_synthetic} | {r.medium} | "
                     f"{r.eval_acc} |")
    lines += ["", "✱ the interval excludes 0 after the Holm correction (adjusted p < 0.05).", "",
              "Per-class paired difference to real-only (points; cells that add a set):", ""]
    added = [c for c in show.cell if c != "real-only" and not c.startswith("alone")]
    pc = per_class[per_class.cell.isin(added)]
    classes = list(dict.fromkeys(pc["class"]))
    lines += ["| cell | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cell in added:
        sub = pc[pc.cell == cell].set_index("class")
        lines.append(f"| {cell} | " + " | ".join(f"{sub.loc[c, 'diff_mean'] * 100:+.1f}" for c in classes) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


def write_figure(table, per_class, path: Path, real_name: str) -> None:

    t = table[table["mode"] == "added"]
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.18, row_heights=[0.45, 0.55],
                        subplot_titles=("Test accuracy minus real-only (paired by seed, 95% t-interval)",
                                        "Per class: paired difference to real-only (points)"))
    for model, sub in t.groupby("model", sort=False):
        fig.add_trace(go.Scatter(
            x=sub.cell, y=sub.diff_mean * 100, mode="markers", name=model,
            error_y=dict(type="data", symmetric=False, array=(sub.diff_ci_high - sub.diff_mean) * 100,
                         arrayminus=(sub.diff_mean - sub.diff_ci_low) * 100),
            customdata=np.c_[sub.accuracy_mean * 100, sub.measured_medium_share, sub.p_holm],
            hovertemplate="%{x}<br>paired diff %{y:+.2f} pts<br>accuracy %{customdata[0]:.2f}%"
                          "<br>medium-band share %{customdata[1]:.3f}<br>Holm p %{customdata[2]:.3g}<extra></extra>"),
            row=1, col=1)
    fig.add_hline(y=0, line_dash="dot", annotation_text="real only", row=1, col=1)
    pc = per_class[per_class.cell.isin(t.cell)]
    if len(pc):
        z = pc.pivot(index="cell", columns="class", values="diff_mean").reindex(index=list(t.cell),
                                                                                columns=list(dict.fromkeys(pc["class"])))
        lim = float(np.nanmax(np.abs(z.to_numpy()))) * 100 if z.size else 1.0
        fig.add_trace(go.Heatmap(z=z.to_numpy() * 100, x=list(z.columns), y=list(z.index), colorscale="RdBu",
                                 zmid=0, zmin=-lim, zmax=lim, colorbar=dict(title="points", len=0.5, y=0.25),
                                 hovertemplate="%{y}<br>%{x}: %{z:+.2f} pts<extra></extra>"), row=2, col=1)
    fig.update_yaxes(title_text="accuracy difference (points)", row=1, col=1)
    fig.update_layout(title=f"Downstream accuracy with added sets; real subset: {real_name}",
                      template="plotly_white", height=480 + 22 * len(t))
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline


if __name__ == "__main__":
    sys.exit(main())
