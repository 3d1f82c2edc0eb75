"""Project defaults and input limits, one place per concept.

Everything that more than one module (library, scripts, app) needs to agree on lives here:
the prompt template, the medium band, the default difficulty distribution, the sampling
defaults, the checkpoint layout, and the table of input limits. CLI flags and UI controls
read these instead of repeating literals.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- method

PROMPT_TEMPLATE = "a photo of a {}"  # simple class prompts, as in the paper's training
MEDIUM_BAND = (0.3, 0.7)  # "medium difficulty": measured s in this closed interval


@dataclass(frozen=True)
class DifficultyDistribution:
    """Requested difficulty of a synthetic set: s ~ N(mu, sigma) clipped to [0, 1] (the paper's default)."""

    mu: float = 0.5
    sigma: float = 0.1


DIFFICULTY = DifficultyDistribution()


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling defaults: scheduler and steps from bench/speed.py, the two guidance scales from
    bench/variants.py + bench/controllability.py (text 5 / difficulty 8 gave the embedded model
    the best rank correlation and medium-band share with 85% accuracy at low s)."""

    scheduler: str = "dpm++"
    num_inference_steps: int = 15
    guidance_scale: float = 5.0
    difficulty_guidance_scale: float = 8.0


SAMPLING = SamplingDefaults()


# ---------------------------------------------------------------- checkpoint layout

@dataclass(frozen=True)
class CheckpointLayout:
    """File and folder names of a checkpoint folder (see checkpoints/fashion-mnist/README.md)."""

    base: str = "base"  # diffusers StableDiffusionPipeline folder
    dacd: str = "dacd"  # dacd_config.json + LoRA + difficulty_encoder/ (+ calibration.json)
    baseline: str = "baseline"  # dacd_config.json + LoRA, no encoder
    classifier: str = "classifier"  # the scoring classifier (defines s)
    classifier_2: str = "classifier-2"  # a second scoring classifier (other architecture and seed): selects
    classifier_3: str = "classifier-3"  # a third scoring classifier (convnext_atto, seed 3): calibration, stricter pools
    evaluator: str = "evaluator"  # the evaluation classifier (judges; never selects)
    scores: str = "scores.parquet"
    distribution_view: str = "distribution_view.json"  # the app's default Distributions view (precomputed)
    scores_summary: str = "scores_summary.json"
    # inside a dacd folder
    dacd_config: str = "dacd_config.json"
    encoder: str = "difficulty_encoder"
    lora_weights: str = "pytorch_lora_weights.safetensors"
    calibration: str = "calibration.json"
    confuser_prompts: str = "confuser_prompts.json"  # the captions it samples with (train_dacd.py --confuser-prompts)


LAYOUT = CheckpointLayout()
CHECKPOINT_ENV = "DACD_CHECKPOINT"
REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CHECKPOINT = REPO_ROOT / "checkpoints" / "fashion-mnist"


COMMITTEE = (LAYOUT.classifier, LAYOUT.classifier_2)  # the shipped selection committee, by folder name
# the classifiers whose mean s the shipped calibration curve is fitted to (train/calibrate.py's default;
# bench/results/controllability-committee-cal: +0.021 Spearman on the shipped dacd; +0.013, +0.002 on
# two other training runs, -0.002 on the first base's dacd)
CALIBRATION_COMMITTEE = (LAYOUT.classifier, LAYOUT.classifier_2, LAYOUT.classifier_3)


def default_committee(checkpoint: str | Path = EMBEDDED_CHECKPOINT) -> list[str]:
    """The shipped selection committee's folders in `checkpoint`: the scoring classifier (it
    defines s) and classifier-2/. The evaluation classifier is never a member: it judges."""
    return [str(Path(checkpoint) / name) for name in COMMITTEE]


def default_checkpoint() -> Path:
    """The checkpoint folder to use when none is given: $DACD_CHECKPOINT, else the embedded
    default shipped in the repository (found through an editable install or a checkout). The
    folder is not required to exist here: whatever loads from it says what is missing and how
    to point at another (--checkpoint DIR or $DACD_CHECKPOINT)."""
    env = os.environ.get(CHECKPOINT_ENV)
    return Path(env) if env else EMBEDDED_CHECKPOINT


def model_folder(name: str | Path) -> Path:
    """A model argument as a folder: 'dacd' and 'baseline' name the embedded checkpoint's, anything
    else is a path."""
    return EMBEDDED_CHECKPOINT / str(name) if str(name) in (LAYOUT.dacd, LAYOUT.baseline) else Path(name)


def repo_relative(path: str | Path) -> str:
    """How a file or folder is named in what results record (generation.json, settings.json,
    dacd_config.json), one name however it was spelled: relative to the repository when it exists
    inside it, so a record does not depend on where the checkout lies; absolute when it exists
    elsewhere; as given when it does not exist (a hub id)."""
    p = Path(path)
    if not p.exists():
        return str(path)
    resolved = p.resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else resolved.as_posix()


def recorded_model(name: str | Path) -> str:
    """The one name of a model in generated sets' records: 'dacd', 'checkpoints/fashion-mnist/dacd' and
    that folder's absolute path are the same model, recorded as the repository-relative folder."""
    return repo_relative(model_folder(name))


# ---------------------------------------------------------------- input limits

@dataclass(frozen=True)
class Limit:
    """A numeric input's allowed range; `check` refuses anything else with a sentence that
    names the input and the range."""

    label: str  # how messages name the input
    lo: float
    hi: float = math.inf
    integer: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        lo, hi = (f"{int(v):d}" if self.integer and math.isfinite(v) else f"{v:g}" for v in (self.lo, self.hi))
        if math.isinf(self.hi):
            return f"{kind} of at least {lo}"
        return f"{kind} from {lo} to {hi}"

    def check(self, value) -> float | int:
        """`value` as float (int if integer) when allowed, else a ValueError naming the input and the range."""
        try:
            v = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or not self.lo <= v <= self.hi or (self.integer and v != int(v)):
            raise ValueError(f"{self.label} must be {self.describe()}, got {value!r}.")
        return int(v) if self.integer else v


MAX_SEED = 2**31 - 1

# img2img strength of difficulty edits, by bench/edits.py's rule: the highest Spearman (requested vs
# measured s of edits of real test items) among strengths whose edits keep their label at s <= 0.5 within
# 3 points of the real ceiling (README "Difficulty edits")
EDIT_STRENGTH = 0.5

# What is refused anywhere (library, scripts, app).
LIMITS = {
    "difficulty": Limit("difficulty", 0.0, 1.0),
    "mu": Limit("mu", 0.0, 1.0),
    "sigma": Limit("sigma", 0.0, 1.0),
    "guidance_scale": Limit("text guidance", 0.0),
    "difficulty_guidance_scale": Limit("difficulty guidance", 0.0),
    "num_inference_steps": Limit("steps", 1, 1000, integer=True),
    "seed": Limit("seed", 0, MAX_SEED, integer=True),
}

# The app's stricter profile: what its controls allow and accept through the API (CPU-sized).
APP_LIMITS = {
    **LIMITS,
    "sigma": Limit("sigma", 0.0, 0.5),
    "guidance_scale": Limit("text guidance", 0.0, 10.0),
    "difficulty_guidance_scale": Limit("difficulty guidance", 0.0, 10.0),
    "num_inference_steps": Limit("steps", 1, 50, integer=True),
    "num_images": Limit("number of images", 1, 16, integer=True),
    "sweep_rows": Limit("number of seeds (rows)", 1, 8, integer=True),
    "sweep_columns": Limit("columns", 2, 12, integer=True),
    "distribution_n": Limit("N", 1, 2000, integer=True),
    "threads": Limit("torch threads", 1, 256, integer=True),
    "strength": Limit("strength", 0.1, 1.0),
}
