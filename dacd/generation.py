"""Synthetic training sets at any scale: a deterministic plan, resumable generation, a manifest.

A *plan* is one row per image: id, class, requested `s`, seed, prompt. Every value of a
row is a function of (plan seed, class, index within the class) only, so

* an image's id determines its seed, its `s` and its prompt;
* a bigger plan extends a smaller one: the first k ids of a class are the same images
  whatever the total count (take a 10% set from a 25% set by keeping the first ids).

Generation works in fixed *chunks* of the plan (`batch_size` consecutive rows). Chunk c
belongs to process `c % num_processes`, so the split is keyed by position in the plan,
never padded, and any number of processes (or a later run with another number) yields
each id exactly once. A chunk is done when its part file exists: images are written to
a temporary name and renamed, then the chunk's rows (with the evaluation classifier's
measured `s` and predicted class) are written to a hidden `.chunk-XXXXXX.parquet` the
same way (hidden files at the root keep the folder a clean ImageFolder). A killed run therefore redoes at most the chunks in flight, with the same inputs,
and the merged `manifest.parquet` is identical to an uninterrupted run's.

Output layout (an ImageFolder that `dacd.data.load_image_folder` and torchvision read):

    out/
      generation.json          what was planned and how it was sampled
      manifest.parquet         one row per image (MANIFEST_COLUMNS), in plan order
      <class-slug>/<id>.png
      .chunk-000000.parquet ...    one per finished chunk
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from .calibration import Calibration
from .data import resolve_class, slugify
from .defaults import DIFFICULTY, EDIT_STRENGTH, LAYOUT, MEDIUM_BAND, PROMPT_TEMPLATE, recorded_model
from .evaluation import generate_rows, grid_rows, match_to_plan, measure, medium_share
from .sampling import SamplingSettings, sample, seed_from
from .weights import model_fingerprint

MANIFEST_COLUMNS = ["id", "class", "label", "requested_s", "conditioning_s", "seed", "prompt", "model",
                    "measured_s", "predicted_class", "path", "real_subset", "selection_s", "tries", "accepted",
                    "anchor_id"]
PLAN_COLUMNS = ["id", "class", "label", "index", "requested_s", "seed", "prompt"]
CONFIG_NAME = "generation.json"
MANIFEST_NAME = "manifest.parquet"


class GenerationError(RuntimeError):
    """A generation request or output folder that cannot be used as asked (the message says why and what to do)."""


# ---------------------------------------------------------------- difficulty

@dataclass
class DifficultySpec:
    """How requested difficulties are drawn.

    kind="normal": `s ~ N(mu, sigma)` clipped to [0, 1] (the paper's sampling; default
    mu=0.5, sigma=0.1). kind="fixed": every image gets `value`. kind="table": a per-class
    entry, either a number (fixed) or `[mu, sigma]`; classes missing from the table fall
    back to (mu, sigma). kind="uniform": `s ~ U(0, 1)` (the default pool of sampling "pooled",
    which serves plans of any mu).
    """

    kind: str = "normal"
    mu: float = DIFFICULTY.mu
    sigma: float = DIFFICULTY.sigma
    value: float | None = None
    table: dict = field(default_factory=dict)  # class name -> float or [mu, sigma]

    def __post_init__(self):
        if self.kind not in ("normal", "fixed", "table", "uniform"):
            raise GenerationError(f"difficulty kind must be 'normal', 'fixed', 'table' or 'uniform', got {self.kind!r}")
        _check_unit("mu", self.mu)
        if not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise GenerationError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        if self.kind == "fixed":
            if self.value is None:
                raise GenerationError("a fixed difficulty needs a value in [0, 1] (e.g. --s 0.5)")
            _check_unit("difficulty", self.value)
        for name, entry in self.table.items():
            vals = entry if isinstance(entry, (list, tuple)) else [entry]
            if len(vals) not in (1, 2):
                raise GenerationError(f"difficulty table entry for {name!r} must be a number or [mu, sigma], "
                                      f"got {entry!r}")
            _check_unit(f"difficulty for {name!r}", vals[0])
            if len(vals) == 2 and not (np.isfinite(vals[1]) and vals[1] >= 0):
                raise GenerationError(f"sigma for {name!r} must be >= 0, got {vals[1]!r}")

    def params_for(self, class_name: str) -> tuple[float, float]:
        """(mu, sigma) for a class; a fixed value is (value, 0)."""
        if self.kind == "fixed":
            return float(self.value), 0.0
        if self.kind == "table" and class_name in self.table:
            entry = self.table[class_name]
            if isinstance(entry, (list, tuple)):
                return (float(entry[0]), float(entry[1])) if len(entry) == 2 else (float(entry[0]), 0.0)
            return float(entry), 0.0
        return float(self.mu), float(self.sigma)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"s = {self.value:g}"
        if self.kind == "uniform":
            return "s ~ U(0, 1)"
        base = f"s ~ N({self.mu:g}, {self.sigma:g}) clipped to [0, 1]"
        return base if self.kind == "normal" else f"per-class table {self.table} (others {base})"


def _check_unit(name, v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise GenerationError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not (np.isfinite(v) and 0.0 <= v <= 1.0):
        raise GenerationError(f"{name} must be in [0, 1], got {v!r}")


def load_difficulty_table(path: str | Path, class_names) -> dict:
    """A JSON file {class name or id: s or [mu, sigma]} -> {class name: entry}."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GenerationError(f"difficulty table {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise GenerationError(f"difficulty table {path} is not valid JSON ({e}); expected "
                              '{"Shirt": 0.6, "Coat": [0.5, 0.1]}') from None
    if not isinstance(raw, dict):
        raise GenerationError(f"difficulty table {path} must be a JSON object of class -> s or [mu, sigma]")
    return {class_names[_class(k, class_names, path)]: v for k, v in raw.items()}


def _class(key, class_names, source) -> int:
    try:
        return resolve_class(int(key) if str(key).isdigit() else key, class_names)
    except ValueError as e:
        raise GenerationError(f"{source}: {e}") from None


# ---------------------------------------------------------------- prompts

def load_prompt_lists(path: str | Path, class_names) -> dict[int, list[str]]:
    """Per-class caption lists from a JSON file `{class: [caption, ...]}` or a text file of
    `class<TAB>caption` (or `class: caption`) lines; class names or ids, blank lines and
    `#` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    out: dict[int, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenerationError(f"prompt file {path} is not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise GenerationError(f"prompt file {path} must map each class to a list of captions")
        for k, v in raw.items():
            out.setdefault(_class(k, class_names, path), []).extend(str(x).strip() for x in v if str(x).strip())
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            sep = "\t" if "\t" in line else ":"
            if sep not in line:
                raise GenerationError(f"{path}:{n}: expected 'class<TAB>caption' or 'class: caption', got {line!r}")
            k, caption = line.split(sep, 1)
            if caption.strip():
                out.setdefault(_class(k.strip(), class_names, f"{path}:{n}"), []).append(caption.strip())
    if not out:
        raise GenerationError(f"prompt file {path} holds no captions")
    return out


def model_prompt_lists(model_dir: str | Path, class_names) -> dict[int, list[str]] | None:
    """The caption lists a dacd folder samples with unless told otherwise: those of a model trained on
    confuser prompts (its confuser_prompts.json, train/train_dacd.py --confuser-prompts), else None
    (the class prompt of its template)."""
    path = Path(model_dir) / LAYOUT.confuser_prompts
    return load_prompt_lists(path, class_names) if path.is_file() else None


# ---------------------------------------------------------------- plan

def counts_from_ratio(real_labels, ratio: float, num_classes: int) -> dict[int, int]:
    """Images per class for a synthetic set `ratio` times the size of a real set (per class)."""
    if not (np.isfinite(ratio) and ratio > 0):
        raise GenerationError(f"ratio must be > 0, got {ratio!r}")
    per_class = np.bincount(np.asarray(real_labels, int), minlength=num_classes)
    return {c: int(np.floor(ratio * n + 0.5)) for c, n in enumerate(per_class)}  # half up, not to even


def make_plan(class_names, counts: dict[int, int] | int, difficulty: DifficultySpec | None = None, *,
              prompts: dict[int, list[str]] | None = None, prompt_template: str = PROMPT_TEMPLATE,
              seed: int = 0) -> pd.DataFrame:
    """One row per planned image, classes in order, ids `<class-slug>-<index:06d>`.

    The row of (class c, index k) depends only on (seed, c, k): its noise seed, its
    requested `s` and (with caption lists) its prompt.
    """
    difficulty = difficulty or DifficultySpec()
    class_names = list(class_names)
    if isinstance(counts, (int, np.integer)):
        counts = {c: int(counts) for c in range(len(class_names))}
    rows = []
    for c in sorted(counts):
        if not 0 <= c < len(class_names):
            raise GenerationError(f"class id {c} out of range for {len(class_names)} classes")
        n = int(counts[c])
        if n < 0:
            raise GenerationError(f"count for {class_names[c]!r} must be >= 0, got {n}")
        mu, sigma = difficulty.params_for(class_names[c])
        captions = (prompts or {}).get(c)
        slug = slugify(class_names[c])
        for k in range(n):
            rng = np.random.default_rng([seed, c, k, 1])
            if difficulty.kind == "uniform":
                s = float(rng.uniform(0.0, 1.0))
            else:
                s = float(np.clip(rng.normal(mu, sigma), 0.0, 1.0)) if sigma > 0 else float(mu)
            prompt = captions[int(rng.integers(len(captions)))] if captions else prompt_template.format(class_names[c])
            rows.append((f"{slug}-{k:06d}", class_names[c], c, k, s, seed_from(seed, c, k), prompt))
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    if plan.id.duplicated().any():
        dup = plan.id[plan.id.duplicated()].iloc[0]
        raise GenerationError(f"two classes share the id prefix of {dup!r}: rename a class")
    return plan


def plan_fingerprint(plan: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for col in ("id", "label", "requested_s", "seed", "prompt") + (("anchor_id",) if "anchor_id" in plan else ()):
        h.update(pd.util.hash_pandas_object(plan[col], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Anchoring:
    """Sampling "anchored": each planned image is an edit of a real image of its class (img2img at
    `strength`), the real image chosen by `assign_anchors` with `seed`."""

    strength: float = EDIT_STRENGTH
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.strength, (int, float)) and 0 < float(self.strength) <= 1):
            raise GenerationError(f"strength must be in (0, 1], got {self.strength!r}")


def assign_anchors(plan: pd.DataFrame, anchor_ids, anchor_labels, seed: int = 0) -> pd.DataFrame:
    """The plan with an `anchor_id` column: row k of class c takes the k-th of the anchors of class
    c in a seeded order (cycling when the class has fewer anchors than rows). Depends only on
    (seed, class, k) and the anchor set, so a smaller plan's anchors are a larger plan's first."""
    anchor_ids, anchor_labels = np.asarray(anchor_ids).astype(str), np.asarray(anchor_labels, int)
    out = np.empty(len(plan), object)
    for c, rows in plan.groupby("label").groups.items():
        pool = anchor_ids[anchor_labels == int(c)]
        if not len(pool):
            raise GenerationError(f"no real image of class {plan.loc[rows[0], 'class']!r} to anchor its rows on: "
                                  "the real subset must hold every planned class")
        order = np.random.default_rng([int(seed), int(c), 2]).permutation(pool)
        out[np.asarray([plan.index.get_loc(r) for r in rows])] = order[plan.loc[rows, "index"].to_numpy() % len(order)]
    return plan.assign(anchor_id=out.astype(str))


def anchor_images(plan: pd.DataFrame, ids, images) -> dict:
    """{anchor id: uint8 (C, H, W) image} for every anchor of `plan`, looked up in the real images
    `images` whose ids are `ids` (what `generate_dataset` and `generate_pooled_set` take as `anchors`)."""
    pos = {str(i): k for k, i in enumerate(np.asarray(ids).astype(str))}
    missing = sorted(set(plan.anchor_id) - set(pos))
    if missing:
        raise GenerationError(f"{len(missing)} anchor ids of the plan are not among the real images (e.g. "
                              f"{missing[0]!r}): assign anchors from the same images")
    return {a: images[pos[a]] for a in plan.anchor_id.unique()}


def take_first(manifest: pd.DataFrame, counts: dict[int, int]) -> pd.DataFrame:
    """The first `counts[c]` images of each class (plan order): a smaller set taken from a bigger one."""
    parts = []
    for c, n in sorted(counts.items()):
        sub = manifest[manifest.label == c].sort_values("id")
        if len(sub) < n:
            raise GenerationError(f"the set holds {len(sub)} images of class {c}, {n} asked: generate more")
        parts.append(sub.iloc[:n])
    return pd.concat(parts, ignore_index=True) if parts else manifest.iloc[:0]


# ---------------------------------------------------------------- generation

# ---------------------------------------------------------------- selection

@dataclass
class Selection:
    """Sampling "selected": each planned row is tried up to `max_tries` times (try k seeded from
    (row seed, k)) and a try is accepted when the committee's mean s is within `tolerance` of the
    requested s and, with `label_rule`, every committee member still ranks the label first. At
    the cap the try nearest to acceptance (label-faithful tries first) is kept, marked not accepted."""

    max_tries: int = 6
    tolerance: float | None = 0.05  # None: this default (so a command line's unset --tolerance passes through)
    label_rule: bool = True
    pilot: int = 4  # images per (class, grid value) of the pilot that fits per-class conditioning; 0: none
    pilot_faithful: bool = False  # fit the pilot on the tries every member still classifies as their label

    def __post_init__(self):
        if not (isinstance(self.max_tries, (int, np.integer)) and self.max_tries >= 1):
            raise GenerationError(f"max_tries must be an integer >= 1, got {self.max_tries!r}")
        if not (isinstance(self.pilot, (int, np.integer)) and self.pilot >= 0):
            raise GenerationError(f"pilot must be an integer >= 0 (images per class and grid value), got {self.pilot!r}")
        _resolve_tolerance(self)


def _resolve_tolerance(settings) -> None:
    """A `Selection`'s or `Pooling`'s tolerance: None becomes its class's default; any other value
    must lie in [0, 1]."""
    if settings.tolerance is None:
        object.__setattr__(settings, "tolerance", type(settings).tolerance)
    if not (np.isfinite(settings.tolerance) and 0 <= settings.tolerance <= 1):
        raise GenerationError(f"tolerance must be in [0, 1], got {settings.tolerance!r}")


def committee_scores(committee, images_uint8_nchw, labels) -> tuple[np.ndarray, np.ndarray]:
    """The committee's mean measured s of each image for its label, and whether every member ranks
    the label first."""
    labels = np.asarray(labels)
    s, faithful = np.zeros(len(labels)), np.ones(len(labels), bool)
    for clf in committee:
        m, _ = measure(clf, images_uint8_nchw, labels)
        s += m.measured_s.to_numpy(float) / len(committee)
        faithful &= m.pred.to_numpy() == labels
    return s, faithful


def committee_accept(committee, labels, targets, selection: Selection):
    """An accept function for `dacd.sampling.sample`: rows are positions in `labels`/`targets`."""
    labels, targets = np.asarray(labels), np.asarray(targets, float)

    def accept(images, rows):
        s, faithful = committee_scores(committee, to_uint8(images).transpose(0, 3, 1, 2), labels[rows])
        gap = np.abs(s - targets[rows])
        if not selection.label_rule:
            return gap <= selection.tolerance, gap
        return (gap <= selection.tolerance) & faithful, gap + np.where(faithful, 0.0, 1.0)

    return accept


PILOT_SEED = 7919  # the pilot's noise: fixed, and apart from the seeds plans and the calibration grid use


def faithful_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose `faithful` is True, and every row of a (label, requested_s) cell that has none."""
    any_faithful = rows.groupby(["label", "requested_s"]).faithful.transform("any")
    return rows[rows.faithful | ~any_faithful]


def fit_pilot(pipe, committee, classes, sampling: SamplingSettings, n: int, batch_size: int = 100,
              faithful_only: bool = False) -> Calibration:
    """Per-class conditioning for selection, fitted before the first chunk: `n` images per class
    and grid value of s (the controllability grid, seed PILOT_SEED), generated uncalibrated at
    `sampling` and measured by the committee's mean s. Its `invert(label, target)` is the
    conditioning whose images the committee measured as `target` on average, so that the first
    tries of a row already land near its target and acceptance stays high. With `faithful_only`
    the means are over the images every member still classifies as their label (what selection
    can accept); a (class, grid value) with none keeps the mean over all its images."""
    rows = grid_rows(list(classes), n, PILOT_SEED)
    images = generate_rows(pipe, rows, replace(sampling, calibrated=False), batch_size=batch_size)
    s, faithful = committee_scores(committee, to_uint8(images), rows.label.to_numpy())
    rows = rows.assign(measured_s=s, faithful=faithful)
    return Calibration.fit(faithful_rows(rows) if faithful_only else rows, meta={"fitted_by": "selection pilot", "n_per_cell": n, "seed": PILOT_SEED,
                                       "measured_by": "committee mean" + (" of label-faithful images"
                                                                          if faithful_only else "")})


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded to nearest (how sets and exports store them)."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _png_bytes(img: np.ndarray) -> bytes:

    arr = img[..., 0] if img.shape[-1] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def read_png(path: str | Path) -> np.ndarray:
    """A PNG written by `generate_dataset` -> uint8 (C, H, W)."""

    with Image.open(path) as im:
        a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def chunk_path(out_dir: Path, c: int) -> Path:
    return out_dir / f".chunk-{c:06d}.parquet"


def _differences(name: str, old, new) -> list[str]:
    """'name: X in the folder, Y now' for each differing (nested) setting."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(f"{name}.{k}", old.get(k), new.get(k))]
    return [f"{name}: {old!r} in the folder, {new!r} now"]


def _with_model_recorded(config):
    """A generation.json's settings with its model as `recorded_model` names it: sets written before
    that recorded the model as it was spelled ('dacd', an absolute path) and resume all the same."""
    if isinstance(config, dict) and isinstance(config.get("model"), str):
        config["model"] = recorded_model(config["model"])
    return config


def _read_config(out_dir: Path) -> dict | None:
    path = Path(out_dir) / CONFIG_NAME
    try:
        return _with_model_recorded(json.loads(path.read_text())) if path.is_file() else None
    except (ValueError, OSError):
        return None


def _calibration_record(pipe, sampling: SamplingSettings, anchoring) -> dict:
    """What a calibrated set was conditioned through, for its generation.json: the curve's content
    hash (a refitted curve is another set: resuming is refused) and the sampling settings that differ
    from those the curve was fitted at (the ones the pipeline warns about). Empty when uncalibrated."""
    if not sampling.calibrated:
        return {}
    if anchoring is None:
        curve = pipe.calibration
        differences = pipe.calibration_differences(
            guidance_scale=sampling.guidance_scale, difficulty_guidance_scale=sampling.difficulty_guidance_scale,
            num_inference_steps=sampling.num_inference_steps, scheduler=sampling.scheduler,
            guidance_interval=sampling.guidance_interval, guidance_rescale=sampling.guidance_rescale)
    else:  # edits: the curve of their strength (checked to exist before this), fitted at their step count
        curve = getattr(pipe, "img2img_calibrations", {}).get(round(float(anchoring.strength), 6))
        differences = []
    if curve is None:
        return {}
    # what conditioning depends on: the knots and how they are made monotone (not notes in the meta)
    content = json.dumps({"requested": curve.requested, "measured": curve.measured, "monotone": curve.monotone},
                         sort_keys=True)
    return {"calibration": {"fingerprint": hashlib.sha256(content.encode()).hexdigest()[:16],
                            "measured_by": curve.meta.get("measured_by"), "differences": differences}}


def _check_or_write_config(out_dir: Path, config: dict, is_main: bool, barrier) -> None:
    path = out_dir / CONFIG_NAME
    config = _with_model_recorded(dict(config))
    if is_main:
        if path.is_file():
            old = _with_model_recorded(json.loads(path.read_text()))
            keys = ("plan_fingerprint", "model", "sampling", "batch_size", "selection", "pilot", "anchoring",
                    "feedback", "pooling", "pool")
            # a calibrated set is resumed only through the same curve (its content, not the recorded
            # differences' wording); a folder written before curves were recorded is taken as it is
            old_curve, new_curve = ((c.get("calibration") or {}).get("fingerprint") for c in (old, config))
            if "calibration" not in old and new_curve is not None:
                import warnings  # noqa: PLC0415

                warnings.warn(f"{out_dir} was written before sets recorded their calibration curve: it is resumed "
                              "as if made with the current one", stacklevel=3)
                old_curve = new_curve
            if any(old.get(k) != config.get(k) for k in keys) or old_curve != new_curve:
                # every setting that differs, not only the ones that decide (the plan fingerprint alone
                # would not say that --mu changed)
                shown = sorted(config, key=lambda k: k == "plan_fingerprint")
                diff = [d for k in shown for d in _differences(k, old.get(k), config.get(k))]
                raise GenerationError(
                    f"{out_dir} holds a generation with other settings ({'; '.join(diff)}; see {path}): "
                    "rerun with the same arguments to continue it, or pass another output folder")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(path, json.dumps(config, indent=2).encode())
        for tmp in out_dir.rglob(".*.tmp-*"):  # leftovers of a killed run: never part of the set
            tmp.unlink(missing_ok=True)
    barrier()


def generate_dataset(pipe, plan: pd.DataFrame, out_dir: str | Path, *, model_id: str, evaluator=None,
                     sampling: SamplingSettings | None = None, batch_size: int = 32, real_subset: str = "",
                     extra_config: dict | None = None, selection: Selection | None = None, committee=(),
                     anchoring: Anchoring | None = None, anchors=None, feedback=None, feedback_scorer: str = "",
                     process_index: int = 0, num_processes: int = 1, barrier=lambda: None,
                     progress: bool = True, stop_after_chunks: int | None = None, donors=()) -> dict:
    """Generate the plan's images into `out_dir` (resumable), then merge the manifest.

    Each process calls this with its `process_index`; `barrier` synchronises them (e.g.
    `accelerate.PartialState().wait_for_everyone`). `real_subset` names the real set whose size
    the counts were derived from (a manifest column; "" when counts were given directly).
    With `selection`, rows are over-generated and chosen by `committee` (scoring classifiers that
    are not the evaluator), and the set's sampling is "selected". With `anchoring` (the plan has an
    `anchor_id` column, see `assign_anchors`; `anchors` maps each id to its uint8 (C, H, W) image),
    each image is an img2img edit of its anchor and the sampling is "anchored". With `feedback` (a
    `dacd.feedback.FeedbackGuidance`; `feedback_scorer` names its classifier in generation.json) every
    image, and every try of a selected row, is steered by the classifier's gradient; "+feedback" is
    added to the sampling mode.
    `stop_after_chunks` ends this process
    after that many new chunks without merging (tests: a simulated kill). `donors`: finished folders
    whose rows this plan shares (same id, seed, request, prompt and anchor, made with the same model,
    settings and mode; e.g. a smaller pool of the same plan spec: row k of a class is the same row
    whatever the size) give their images and manifest rows instead of being sampled again, chunk by
    chunk (a chunk any of whose rows no donor holds is sampled whole); other folders are ignored.
    The images are the donor's (within float noise of sampling them in this folder's batches),
    measured again by `evaluator`. Returns a summary; `summary["complete"]` says whether the
    manifest was written and `summary["reused"]` how many images this process took from donors.
    """
    model_id = recorded_model(model_id)
    out_dir = Path(out_dir)
    sampling = sampling or SamplingSettings()
    if batch_size < 1:
        raise GenerationError(f"batch_size must be >= 1, got {batch_size}")
    if not len(plan):
        raise GenerationError("the plan is empty: ask for at least one image")
    unknown = sorted(set(plan["class"]) - set(pipe.class_names))
    if unknown:
        raise GenerationError(f"the model does not know the classes {unknown}; it has {list(pipe.class_names)}")
    if evaluator is not None:
        ev_names = list(evaluator.config.class_names)
        if (ev_names and ev_names != list(pipe.class_names)) or evaluator.config.num_classes != len(pipe.class_names):
            raise GenerationError(f"the evaluation classifier knows {ev_names or evaluator.config.num_classes} "
                                  f"classes, the model {list(pipe.class_names)}: pass an evaluator trained on this "
                                  "model's classes (train/train_classifier.py), or none")
    if selection is not None:
        if not committee:
            raise GenerationError("selection needs a committee of scoring classifiers (e.g. the checkpoint's "
                                  "classifier/ and classifier-2/)")
        for clf in committee:
            names = list(clf.config.class_names)
            if (names and names != list(pipe.class_names)) or clf.config.num_classes != len(pipe.class_names):
                raise GenerationError(f"a committee classifier knows {names or clf.config.num_classes} classes, the "
                                      f"model {list(pipe.class_names)}: pass classifiers trained on its classes")
    if (anchoring is None) != ("anchor_id" not in plan):
        raise GenerationError("anchored sampling needs both `anchoring` and a plan with anchor ids (assign_anchors)")
    if feedback is not None and (anchoring is not None or not pipe.has_difficulty):
        raise GenerationError("feedback guidance steers text-to-image sampling of a dacd model: not edits "
                              "(--anchor) nor a model without a difficulty encoder")
    if anchoring is not None:
        missing = sorted(set(plan.anchor_id) - set(anchors or {}))
        if missing:
            raise GenerationError(f"{len(missing)} anchor images are missing (e.g. {missing[0]!r}): pass every "
                                  "anchor id of the plan in `anchors`")
        from .img2img import DifficultyControlledImg2ImgPipeline  # noqa: PLC0415 (img2img builds on the pipeline)

        if not isinstance(pipe, DifficultyControlledImg2ImgPipeline):
            pipe = DifficultyControlledImg2ImgPipeline.from_pipe(pipe)
        # refused before generation.json is written, so a corrected rerun into the folder is not refused
        if pipe.steps_rerun(anchoring.strength, sampling.num_inference_steps) < 1:
            raise GenerationError(f"strength {anchoring.strength:g} x {sampling.num_inference_steps} steps is less "
                                  "than one denoising step: raise --strength or --steps")
        if sampling.calibrated:
            try:
                pipe.conditioning_difficulties([0], [0.5], True, anchoring.strength, sampling.num_inference_steps)
            except ValueError as e:
                raise GenerationError(str(e)) from None
    mode = "plain" if selection is None else "selected"
    mode = mode if anchoring is None else ("anchored" if selection is None else "anchored-selected")
    mode = mode if feedback is None else mode + "+feedback"
    pilot = None
    if selection is not None and selection.pilot and pipe.has_difficulty and anchoring is None:
        old = _read_config(out_dir)  # a resumed run reuses its pilot (deterministic, but not free)
        if old is not None and old.get("pilot") and old.get("selection") == asdict(selection) \
                and old.get("model") == model_id and old.get("sampling") == sampling.as_config():
            pilot = Calibration(**old["pilot"])
        else:
            classes = sorted({pipe.class_names.index(n) for n in plan["class"]})
            pilot = fit_pilot(pipe, committee, classes, sampling, selection.pilot, batch_size,
                              faithful_only=selection.pilot_faithful)
    config = {"model": model_id, "sampling": sampling.as_config(), "batch_size": int(batch_size),
              "sampling_mode": mode,  # (a pilot's conditioning replaces the checkpoint's curve)
              **(_calibration_record(pipe, sampling, anchoring) if pilot is None else {}),
              "selection": None if selection is None else asdict(selection),
              "anchoring": None if anchoring is None else asdict(anchoring),
              **({} if feedback is None else {"feedback": {"scale": float(feedback.scale), "steps": int(feedback.steps),
                                                           "scorer": feedback_scorer}}),
              "pilot": None if pilot is None else asdict(pilot),
              "plan_fingerprint": plan_fingerprint(plan), "num_images": int(len(plan)),
              "counts": {str(k): int(v) for k, v in plan["class"].value_counts(sort=False).items()},
              **(extra_config or {})}
    _check_or_write_config(out_dir, config, process_index == 0, barrier)
    for name in plan["class"].unique():
        (out_dir / slugify(name)).mkdir(exist_ok=True)

    n_chunks = -(-len(plan) // batch_size)
    mine = [c for c in range(process_index, n_chunks, num_processes)]
    todo = [c for c in mine if not chunk_path(out_dir, c).is_file()]
    reused = 0
    if donors and todo:
        todo, reused = _reuse_donor_chunks(plan, out_dir, todo, batch_size, donors, config, evaluator,
                                           list(pipe.class_names), real_subset)
    label_of = {n: i for i, n in enumerate(pipe.class_names)}
    bar = tqdm(total=len(mine) * batch_size, initial=(len(mine) - len(todo)) * batch_size, unit="img",
               desc=f"generate [{process_index + 1}/{num_processes}]", position=process_index,
               disable=not progress, dynamic_ncols=True)
    t0, done_now = time.time(), 0
    for c in todo:
        if stop_after_chunks is not None and done_now >= stop_after_chunks:
            break
        rows = plan.iloc[c * batch_size:(c + 1) * batch_size]
        labels = [label_of[n] for n in rows["class"]]
        accept = None if selection is None else committee_accept(committee, labels, rows.requested_s, selection)
        if pilot is None:
            difficulties, row_sampling = rows.requested_s.tolist(), sampling
        else:  # the pilot's conditioning replaces the checkpoint's calibration curve
            difficulties = [pilot.invert(c, t) for c, t in zip(labels, rows.requested_s)]
            row_sampling = replace(sampling, calibrated=False)
        edit = {} if anchoring is None else {"strength": anchoring.strength,
                                             "sources": [np.asarray(anchors[a]).transpose(1, 2, 0)
                                                         for a in rows.anchor_id]}
        res = sample(pipe, labels, difficulties, rows.seed.tolist(), row_sampling,
                     prompts=rows.prompt.tolist(), chunk_size=len(rows), accept=accept,
                     max_tries=1 if selection is None else selection.max_tries, **edit,
                     **({} if feedback is None else {"feedback": feedback}))
        imgs = to_uint8(res.images)  # (B, H, W, C)
        selection_s = (np.full(len(rows), np.nan) if selection is None else
                       committee_scores(committee, imgs.transpose(0, 3, 1, 2), labels)[0])
        paths = [f"{slugify(n)}/{i}.png" for n, i in zip(rows["class"], rows.id)]
        for img, p in zip(imgs, paths):
            _atomic_write_bytes(out_dir / p, _png_bytes(img))
        if evaluator is not None:
            m, _ = measure(evaluator, imgs.transpose(0, 3, 1, 2), labels)
            measured, predicted = m.measured_s.to_numpy(), [pipe.class_names[int(p)] for p in m.pred]
        else:
            measured, predicted = np.full(len(rows), np.nan), [None] * len(rows)
        cond = res.conditioning_s
        part = pd.DataFrame({"id": rows.id.to_numpy(), "class": rows["class"].to_numpy(), "label": labels,
                             "requested_s": rows.requested_s.to_numpy(),
                             "conditioning_s": np.asarray(cond, float) if pipe.has_difficulty
                             else np.full(len(rows), np.nan),
                             "seed": rows.seed.to_numpy(), "prompt": rows.prompt.to_numpy(), "model": model_id,
                             "measured_s": np.asarray(measured, float), "predicted_class": predicted,
                             "path": paths, "real_subset": real_subset, "selection_s": selection_s,
                             "tries": res.tries, "accepted": res.accepted,
                             "anchor_id": rows.anchor_id.to_numpy() if anchoring is not None else ""})
        _atomic_parquet(part[MANIFEST_COLUMNS], chunk_path(out_dir, c))
        done_now += 1
        bar.update(len(rows))
    bar.close()
    seconds = time.time() - t0
    stopped = stop_after_chunks is not None and done_now < len(todo)
    barrier()
    summary = {"out_dir": str(out_dir), "planned": int(len(plan)), "seconds": seconds, "complete": False,
               "reused": reused}
    if process_index == 0 and not stopped:
        manifest = merge_manifest(out_dir, plan, n_chunks)
        if manifest is not None:
            summary.update(complete=True, **manifest_summary(manifest))
            if selection is not None:  # acceptance per class, recorded beside the settings
                cfg = json.loads((out_dir / CONFIG_NAME).read_text())
                cfg["acceptance"] = summary["acceptance_per_class"]
                _atomic_write_bytes(out_dir / CONFIG_NAME, json.dumps(cfg, indent=2).encode())
    barrier()
    return summary


_DONOR_KEYS = ("model", "sampling", "sampling_mode", "selection", "pilot", "anchoring", "feedback", "calibration")
_ROW_KEYS = ("seed", "requested_s", "prompt", "label")


def _reuse_donor_chunks(plan: pd.DataFrame, out_dir: Path, todo: list[int], batch_size: int, donors,
                        config: dict, evaluator, class_names, real_subset: str) -> tuple[list[int], int]:
    """Write the chunks of `todo` whose every row a compatible donor holds (see `generate_dataset`);
    returns the chunks still to sample and how many images were reused. The copied images are
    measured again by this run's `evaluator` (or not at all without one), so a grown folder never
    mixes two judges. A donor skipped whole is said with its reason (a warning): the model is
    compared as recorded (its folder), so giving a donor of the same weights is the caller's part
    (`train/downstream.py` checks it through the pool's identity)."""
    import warnings  # noqa: PLC0415

    config = _with_model_recorded(dict(config))
    keys = list(_ROW_KEYS) + (["anchor_id"] if "anchor_id" in plan else [])
    found = []
    for donor in map(Path, donors):
        if donor.resolve() == out_dir.resolve():
            continue
        old = _read_config(donor)
        other = [k for k in _DONOR_KEYS if old.get(k) != config.get(k)] if old is not None else []
        why = ("it is not finished (no manifest.parquet)" if not (donor / MANIFEST_NAME).is_file() else
               "it has no generation.json" if old is None else
               f"it was made with other settings ({', '.join(other)})" if other else "")
        if why:
            warnings.warn(f"donor {donor} gives no image: {why}", stacklevel=3)
            continue
        m = pd.read_parquet(donor / MANIFEST_NAME)
        both = m.merge(plan[["id", *keys]], on="id", suffixes=("", "_plan"))
        same = np.all([both[k].to_numpy() == both[f"{k}_plan"].to_numpy() for k in keys], axis=0)
        found.append(both.loc[same, MANIFEST_COLUMNS].assign(_donor=str(donor)))
    if not found:
        return todo, 0
    held = pd.concat(found, ignore_index=True).drop_duplicates("id").set_index("id")
    left, reused = [], 0
    for c in todo:
        ids = plan.id.iloc[c * batch_size:(c + 1) * batch_size]
        if not ids.isin(held.index).all():
            left.append(c)
            continue
        part = held.loc[ids].reset_index().assign(real_subset=real_subset)
        for src, donor in zip(part.path, part._donor):
            _atomic_write_bytes(out_dir / src, (Path(donor) / src).read_bytes())
        if evaluator is not None:
            m, _ = measure(evaluator, load_generated_images(out_dir, part), part.label.to_numpy())
            part["measured_s"] = m.measured_s.to_numpy(float)
            part["predicted_class"] = [class_names[int(i)] for i in m.pred]
        else:
            part["measured_s"], part["predicted_class"] = np.nan, None
        _atomic_parquet(part[MANIFEST_COLUMNS], chunk_path(out_dir, c))
        reused += len(part)
    return left, reused


def merge_manifest(out_dir: str | Path, plan: pd.DataFrame, n_chunks: int) -> pd.DataFrame | None:
    """All chunks present -> the manifest in plan order, checked against the plan and written
    atomically; None while chunks are missing."""
    out_dir = Path(out_dir)
    if any(not chunk_path(out_dir, c).is_file() for c in range(n_chunks)):
        return None
    manifest = pd.concat([pd.read_parquet(chunk_path(out_dir, c)) for c in range(n_chunks)], ignore_index=True)
    if manifest.id.duplicated().any() or list(manifest.id) != list(plan.id):
        raise GenerationError(f"{out_dir}: the chunks do not add up to the plan (duplicated or missing ids); "
                              "delete the folder and generate again")
    missing = [p for p in manifest.path if not (out_dir / p).is_file()]
    if missing:
        raise GenerationError(f"{out_dir}: {len(missing)} images listed in the chunks are missing (e.g. "
                              f"{missing[0]}); delete their .chunk-*.parquet files and rerun to regenerate them")
    _atomic_parquet(manifest, out_dir / MANIFEST_NAME)
    return manifest


def load_manifest(out_dir: str | Path) -> pd.DataFrame:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise GenerationError(f"{path} does not exist: the generation in {out_dir} has not finished; "
                              "rerun train/generate.py with the same arguments to complete it")
    return pd.read_parquet(path)


def load_generated_images(out_dir: str | Path, manifest: pd.DataFrame) -> np.ndarray:
    """uint8 (N, C, H, W) images of the manifest's rows, in row order."""
    out_dir = Path(out_dir)
    return np.stack([read_png(out_dir / p) for p in manifest.path])


def manifest_summary(manifest: pd.DataFrame) -> dict:

    m = manifest.measured_s.to_numpy(float)
    have = ~np.isnan(m)
    out = {"images": int(len(manifest)), "requested_s_mean": float(manifest.requested_s.mean()),
           "requested_medium_share": medium_share(manifest.requested_s)}
    if have.any():
        out.update(measured_s_mean=float(m[have].mean()), measured_medium_share=medium_share(m[have]),
                   medium_band=list(MEDIUM_BAND),
                   evaluator_accuracy=float((manifest["class"][have] == manifest.predicted_class[have]).mean()))
    if "selection_s" in manifest and manifest.selection_s.notna().any():  # a selected set
        out.update(mean_tries=float(manifest.tries.mean()), accepted_share=float(manifest.accepted.mean()),
                   acceptance_per_class={str(k): float(v) for k, v in manifest.groupby("class").accepted.mean().items()})
    return out


# ---------------------------------------------------------------- pooled selection

POOL_SCORES = "committee-{key}.parquet"


@dataclass(frozen=True)
class Pooling:
    """Sampling "pooled": over-generate once, then match. A pool of `factor` x the planned images
    per class is generated at `s ~ U(0, 1)` (plain sampling, resumable like any set; or conditioned on
    the plan's own difficulty spec, a pool per mu: `make_pool_plan(difficulty=...)`), the committee
    measures every pool image once, and each planned row, in plan order, takes the unused pool
    image of its class whose committee-mean s is nearest its request (`match_to_plan`, as the
    real-matched arm does with real images) among the images every member classifies as their
    label (with `label_rule`); once a class has no faithful image left, its further rows take its
    other images from the lowest committee s up (the least confidently wrong first, whatever the
    request: a row asking for s = 0.9 would otherwise get a confident other-class image). A row is
    `accepted` when its image is within `tolerance` (and, with `label_rule`, faithful). The
    manifest's `tries` is the factor: images generated per kept image. With looser committees
    (`generate_pooled_set(looser=...)`), the label rule is tiered (`match_tiered`): a row the
    committee cannot serve within `tolerance` takes a looser committee's faithful image before an
    out-of-tolerance one.

    With anchoring (sampling "anchored-pooled"), the pool plan carries anchors (`assign_anchors` on
    the pool plan) and every pool image is an img2img edit of a real image of its class instead of
    a sample from noise; matching is the same, and the manifest's `anchor_id` names each kept
    image's source. A class's anchors cycle when its pool is bigger than its real images (at r =
    0.25 of a subset and factor 6, each real image is edited 1.5 times on average), so a set can
    hold two edits of one real image, with different noise.

    Unlike per-row selection no try is wasted on the row it was drawn for: an image too easy for
    one row serves another, and one uniform pool serves plans of any mu over the same counts. A row's image
    depends only on the pool and the rows of its class before it, so a smaller ratio's set is the
    first ids of a larger one."""

    factor: int = 6
    tolerance: float | None = 0.1  # None: this default
    label_rule: bool = True

    def __post_init__(self):
        if not (isinstance(self.factor, (int, np.integer)) and self.factor >= 1):
            raise GenerationError(f"the pool factor must be an integer >= 1 (pool images per planned image), "
                                  f"got {self.factor!r}")
        _resolve_tolerance(self)


def committee_key(folders) -> str:
    """A short name of a committee's content (its members' fingerprints), for a pool's score cache."""
    return "-".join(model_fingerprint(f)[:8] for f in folders)


def feedback_scorer_name(folders) -> str:
    """How generation.json names the classifiers that steer feedback: one by its folder's name (as
    sets did before committees), several by their content ("committee " + `committee_key`)."""
    folders = list(folders)
    return Path(folders[0]).name if len(folders) == 1 else "committee " + committee_key(folders)


def _pool_difficulty_record(spec: DifficultySpec | None) -> dict:
    """How a pool's generation.json records its conditioning (the uniform pool's record as before)."""
    if spec is None or spec.kind == "uniform":
        return {"kind": "uniform", "description": "s ~ U(0, 1)"}
    return {**asdict(spec), "description": spec.describe()}


def make_pool_plan(plan: pd.DataFrame, class_names, factor: int, *, prompts=None,
                   prompt_template: str = PROMPT_TEMPLATE, seed: int = 0,
                   difficulty: DifficultySpec | None = None) -> pd.DataFrame:
    """The pool for `plan`: `factor` x its count per class, same prompts and seed, conditioned at
    s ~ U(0, 1) (one pool for plans of any mu), or with `difficulty` (e.g. the plan's own spec: a
    pool per mu, so the dial reaches the pool through the conditioning, not only through matching).
    Pool row k of a class has the noise seed of plan row k whatever the difficulty."""
    class_names = list(class_names)
    counts = {int(c): int(n) * int(factor) for c, n in plan.label.value_counts(sort=False).items()}
    return make_plan(class_names, counts, difficulty or DifficultySpec(kind="uniform"), prompts=prompts,
                     prompt_template=prompt_template, seed=seed)


def score_pool(pool_dir: str | Path, committee, key: str) -> pd.DataFrame:
    """The pool's manifest with the committee's `selection_s` and `faithful` per image, computed once
    and cached in the pool folder under `key` (name the committee's content, e.g. its fingerprints)."""
    pool_dir = Path(pool_dir)
    manifest = load_manifest(pool_dir)
    cache = pool_dir / POOL_SCORES.format(key=key)
    if cache.is_file():
        scored = pd.read_parquet(cache)
        if list(scored.id) == list(manifest.id):
            return manifest.drop(columns=["selection_s"]).merge(scored, on="id", how="left", validate="1:1")
    s, faithful = np.zeros(len(manifest)), np.zeros(len(manifest), bool)
    for a in range(0, len(manifest), 500):  # bounded memory for big pools
        part = manifest.iloc[a:a + 500]
        s[a:a + 500], faithful[a:a + 500] = committee_scores(committee, load_generated_images(pool_dir, part),
                                                             part.label.to_numpy())
    scored = pd.DataFrame({"id": manifest.id.to_numpy(), "selection_s": s, "faithful": faithful})
    _atomic_parquet(scored, cache)
    return manifest.drop(columns=["selection_s"]).merge(scored, on="id", how="left", validate="1:1")


def match_tiered(pools: list[pd.DataFrame], plan: pd.DataFrame, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The tiered label rule over committees from the strictest down. `pools`: one pool's scored
    frames (`score_pool`), the same images in the same order, each with one committee's
    `selection_s` and `faithful`. Greedy in plan order and without replacement, a row takes the
    nearest unused image that the first committee holds faithful within `tolerance` of its request,
    else the second's, ...; else the nearest faithful image of the first committee, of the second,
    ...; else the lowest-s image left (the first committee's s). Ties: the lower position. Returns
    the positions taken and, per row, the tier (committee index) whose rule took it."""
    labels = pools[0].label.to_numpy()
    s = [p.selection_s.to_numpy(float) for p in pools]
    faithful = [p.faithful.to_numpy(bool) for p in pools]
    if any(np.isnan(x).any() for x in s):
        raise GenerationError("the pool has images without a committee score: score it with score_pool first")
    used = np.zeros(len(labels), bool)
    pick, tier = np.empty(len(plan), int), np.zeros(len(plan), int)
    for row, (r, c) in enumerate(zip(plan.requested_s.to_numpy(float), plan.label.to_numpy())):
        free = (labels == c) & ~used
        if not free.any():
            raise GenerationError(f"the pool is too small for the plan (class {c} has no image left): raise the "
                                  "pool factor")
        gaps = [np.where(free & f, np.abs(x - r), np.inf) for x, f in zip(s, faithful)]
        found = next(((int(np.argmin(g)), t) for t, g in enumerate(gaps) if g.min() <= tolerance), None)
        found = found or next(((int(np.argmin(g)), t) for t, g in enumerate(gaps) if np.isfinite(g.min())), None)
        pick[row], tier[row] = found or (int(np.argmin(np.where(free, s[0], np.inf))), 0)
        used[pick[row]] = True
    return pick, tier


def match_pool(pool: pd.DataFrame, plan: pd.DataFrame, pooling: Pooling, looser=()) -> pd.DataFrame:
    """For each plan row, the pool row it takes (see `Pooling`): the plan's columns plus `pool_id`,
    the pool image's `selection_s`, `faithful`, `accepted`, measured_s, predicted_class, path,
    conditioning_s and seed. `pool` is `score_pool`'s frame. `looser`: the same pool scored by
    looser committees (e.g. the strict committee's members less one), tried in order when the
    strict one holds no faithful image within the tolerance (`match_tiered`, label rule on); the
    rows then also get `tier` (0: the strict committee's rule took the image) and `selection_s`
    and `faithful` are those of the committee whose rule took it."""
    s = pool.selection_s.to_numpy(float)
    if np.isnan(s).any():
        raise GenerationError("the pool has images without a committee score: score it with score_pool first")
    tier = None
    if looser:
        if not pooling.label_rule:
            raise GenerationError("looser committees apply with the label rule: leave out --no-label-rule")
        frames = [pool.reset_index(drop=True), *(f.reset_index(drop=True) for f in looser)]
        if any(list(f.id) != list(frames[0].id) for f in frames[1:]):
            raise GenerationError("the looser committees' scores do not list the pool's images in its order")
        pick, tier = match_tiered(frames, plan, pooling.tolerance)
        took = pool.iloc[pick].reset_index(drop=True)
        took["selection_s"] = np.stack([f.selection_s.to_numpy(float) for f in frames])[tier, pick]
        took["faithful"] = np.stack([f.faithful.to_numpy(bool) for f in frames])[tier, pick]
    else:
        faithful = pool.faithful.to_numpy(bool)
        # unfaithful images sit 2 beyond any faithful one (s is in [0, 1]), so they are taken only when
        # a class has no faithful image left, and then nearest to 2 + request: from the lowest s up
        key = s if not pooling.label_rule else s + np.where(faithful, 0.0, 2.0)
        try:
            pick = match_to_plan(key, pool.label.to_numpy(), plan.requested_s.to_numpy(), plan.label.to_numpy())
        except ValueError as e:
            raise GenerationError(f"the pool is too small for the plan ({e}): raise the pool factor") from None
        took = pool.iloc[pick].reset_index(drop=True)
    ok = np.abs(took.selection_s.to_numpy() - plan.requested_s.to_numpy()) <= pooling.tolerance
    if pooling.label_rule:
        ok &= took.faithful.to_numpy(bool)
    out = plan.reset_index(drop=True).copy()
    if tier is not None:
        out["tier"] = tier
    for col in ("prompt", "measured_s", "predicted_class", "path", "conditioning_s", "selection_s", "faithful"):
        out[col] = took[col].to_numpy()
    if "anchor_id" in took:  # a pool manifest has it ("" unless anchored); hand-made frames may not
        out["anchor_id"] = took.anchor_id.to_numpy()
    out["seed"] = took.seed.to_numpy()  # the pool image's noise seed
    return out.assign(pool_id=took.id.to_numpy(), accepted=ok)


def write_pooled_set(pool_dir: str | Path, pool: pd.DataFrame, plan: pd.DataFrame, out_dir: str | Path, *,
                     pooling: Pooling, model_id: str, config: dict, real_subset: str = "", looser=()) -> dict:
    """Match `plan` to the scored `pool` (tiered over the `looser` committees' scores of it, when
    given: `match_pool`) and write the set to `out_dir` as any generated set (an ImageFolder of
    copies of the chosen pool PNGs, manifest.parquet with `pool_id`, generation.json with per-class
    acceptance). Deterministic and cheap: a rerun rewrites the same files; the manifest is written
    last, so a folder with a manifest is complete. Returns its summary."""
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    matched = match_pool(pool, plan, pooling, looser)
    config = {"sampling_mode": "pooled", **config, "model": model_id, "pooling": asdict(pooling),
              "plan_fingerprint": plan_fingerprint(plan), "num_images": int(len(plan)),
              "counts": {str(k): int(v) for k, v in plan["class"].value_counts(sort=False).items()}}
    _check_or_write_config(out_dir, config, True, lambda: None)
    paths = [f"{slugify(n)}/{i}.png" for n, i in zip(matched["class"], matched.id)]
    for name in matched["class"].unique():
        (out_dir / slugify(name)).mkdir(exist_ok=True)
    for src, dst in zip(matched.path, paths):
        _atomic_write_bytes(out_dir / dst, (pool_dir / src).read_bytes())
    manifest = matched.assign(path=paths, model=model_id, real_subset=real_subset, tries=int(pooling.factor))
    if "anchor_id" not in manifest:
        manifest["anchor_id"] = ""
    manifest = manifest[MANIFEST_COLUMNS + ["pool_id", "faithful"] + ["tier"] * ("tier" in manifest)]
    summary = manifest_summary(manifest)
    cfg = json.loads((out_dir / CONFIG_NAME).read_text())
    cfg["acceptance"] = summary["acceptance_per_class"]
    _atomic_write_bytes(out_dir / CONFIG_NAME, json.dumps(cfg, indent=2).encode())
    _atomic_parquet(manifest, out_dir / MANIFEST_NAME)
    return {"out_dir": str(out_dir), "planned": int(len(plan)), "complete": True, **summary}


def generate_pooled_set(pipe, plan: pd.DataFrame, out_dir: str | Path, *, pool_plan: pd.DataFrame,
                        pool_dir: str | Path, committee, committee_key: str, pooling: Pooling, model_id: str,
                        evaluator=None, sampling: SamplingSettings | None = None, batch_size: int = 32,
                        anchoring: Anchoring | None = None, anchors=None,
                        pool_difficulty: DifficultySpec | None = None, pool_donors=(),
                        extra_config: dict | None = None, real_subset: str = "", looser=(),
                        feedback=None, feedback_scorer: str = "", process_index: int = 0, num_processes: int = 1,
                        barrier=lambda: None, progress: bool = True,
                        stop_after_chunks: int | None = None) -> dict:
    """Sampling "pooled" (see `Pooling`): generate (or resume) the pool into `pool_dir` with any
    number of processes, then, on process 0, score it with the committee and write the matched set
    to `out_dir` (the other processes wait at `barrier`: with a distributed backend, its timeout must
    cover scoring the pool, about a minute per 10,000 32x32 images on a CPU core). `pool_plan` is
    `make_pool_plan(plan, ...)`, or a bigger pool shared by several plans. With `anchoring`, the pool
    plan has anchor ids (`assign_anchors`) and `anchors` their images (`anchor_images`): the pool
    is made of edits and the set's sampling is "anchored-pooled". `pool_difficulty` is the spec the
    pool plan was drawn with (recorded in the pool's generation.json; default s ~ U(0, 1)). `pool_donors`:
    finished pools whose rows the pool shares give their images (`generate_dataset`'s `donors`; e.g.
    a 12x pool of the same plan spec gives a 24x one its first half). `looser`: (committee, key)
    pairs of looser committees for the tiered label rule (`match_pool`); the pool is scored by each,
    and their keys join the set's identity (a set without them keeps its old identity). `feedback` (a
    `dacd.feedback.FeedbackGuidance`, `feedback_scorer` its name) steers every pool image towards its
    own requested s; the sampling is then "pooled+feedback" and the pool's settings join the set's
    identity."""
    model_id = recorded_model(model_id)
    if not committee:
        raise GenerationError("pooled sampling needs a committee of scoring classifiers (e.g. the checkpoint's "
                              "classifier/ and classifier-2/)")
    short = sorted(c for c in set(plan["class"])
                   if (pool_plan["class"] == c).sum() < (plan["class"] == c).sum())
    if short:
        raise GenerationError(f"the pool plan holds fewer images than the plan for {short}: make it bigger")
    sampling = sampling or SamplingSettings()
    pool_id = {"plan_fingerprint": plan_fingerprint(pool_plan), "images": int(len(pool_plan)),
               "committee": committee_key}
    if anchoring is not None:  # (the pool plan's fingerprint holds its anchor ids, not the strength)
        pool_id["anchoring"] = asdict(anchoring)
    if looser:
        if not pooling.label_rule:
            raise GenerationError("looser committees apply with the label rule: leave out --no-label-rule")
        if any(not members for members, _ in looser):
            raise GenerationError("a looser committee needs at least one scoring classifier")
        pool_id["looser_committees"] = [key for _, key in looser]
    if feedback is not None:
        pool_id["feedback"] = {"scale": float(feedback.scale), "steps": int(feedback.steps), "scorer": feedback_scorer}
    old = _read_config(Path(out_dir))
    if old is not None:  # refused before the pool is made, not after (by every process: none waits)
        new = {"model": model_id, "sampling": sampling.as_config(), "batch_size": int(batch_size),
               "pooling": asdict(pooling), "pool": pool_id, "plan_fingerprint": plan_fingerprint(plan)}
        diff = [d for k in new for d in _differences(k, old.get(k), new[k])]
        if diff:
            raise GenerationError(f"{out_dir} holds a set made with other settings ({'; '.join(diff)}): rerun with "
                                  "the same arguments, or pass another output folder")
    pool_summary = generate_dataset(pipe, pool_plan, pool_dir, model_id=model_id, evaluator=evaluator,
                                    sampling=sampling, batch_size=batch_size, progress=progress,
                                    anchoring=anchoring, anchors=anchors,
                                    extra_config={"role": "pool of a pooled set",
                                                  "difficulty": _pool_difficulty_record(pool_difficulty)},
                                    process_index=process_index, num_processes=num_processes, barrier=barrier,
                                    stop_after_chunks=stop_after_chunks, donors=pool_donors,
                                    feedback=feedback, feedback_scorer=feedback_scorer)
    summary = {"out_dir": str(out_dir), "planned": int(len(plan)), "complete": False,
               "pool": pool_summary.get("out_dir"), "pool_reused": pool_summary.get("reused", 0)}
    if pool_summary["complete"] and process_index == 0:
        pool = score_pool(pool_dir, committee, committee_key)
        looser_scores = [score_pool(pool_dir, members, key) for members, key in looser]
        config = {"sampling": sampling.as_config(), "batch_size": int(batch_size),
                  "sampling_mode": ("pooled" if anchoring is None else "anchored-pooled")
                  + ("" if feedback is None else "+feedback"), "pool": pool_id,
                  "pool_folder": str(pool_dir),  # the folder may move: not compared
                  **(extra_config or {})}
        summary = {**write_pooled_set(pool_dir, pool, plan, out_dir, pooling=pooling, model_id=model_id,
                                      config=config, real_subset=real_subset, looser=looser_scores),
                   "pool_reused": summary["pool_reused"]}
    barrier()
    return summary
