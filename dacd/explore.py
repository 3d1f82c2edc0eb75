"""What the app does, without the app: one lazily loading owner of a checkpoint folder
(score table, real images, pipelines, evaluation classifier) and the operations the
tabs call. Thread-safe: each resource is loaded once, under a lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__, evaluation
from .calibration import CURVE_FILES
from .classifier import Classifier
from .data import DatasetError, ImageDataset, load_dataset, resolve_class
from .defaults import (APP_LIMITS, CHECKPOINT_ENV, COMMITTEE, DIFFICULTY, EDIT_STRENGTH, LAYOUT, MEDIUM_BAND,
                       default_checkpoint)
from .difficulty import load_scores
from .generation import Selection, committee_accept
from .sampling import SamplingSettings, sample
from .weights import DamagedWeightsError, check_folder, model_fingerprint

log = logging.getLogger(__name__)

BROWSE_PERCENTILES = (0, 10, 25, 50, 75, 90, 95, 99, 100)
EDIT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # "make harder / easier": requested s of the row of edits


@dataclass
class BrowseResult:
    images: list  # uint8 (C, H, W) arrays
    captions: list[str]
    rows: pd.DataFrame  # the chosen images' rows of the score table


class Explorer:
    """Owns one checkpoint folder's resources, loads each on first use."""

    def __init__(self, checkpoint: str | Path | None = None, data: str = "fashion-mnist", data_dir=None):
        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        self.data, self.data_dir = data, data_dir
        self._lock = threading.RLock()
        self._cache: dict = {}

    def _get(self, key, loader):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = loader()
            return self._cache[key]

    @property
    def name(self) -> str:
        """The checkpoint's folder name: what the page and exports show (never the server's path)."""
        return self.checkpoint.name or str(self.checkpoint)

    def problems(self) -> list[str]:
        """What is missing or damaged, each as a sentence with its fix; checked at start without
        loading any model (file presence, weights headers, the real images)."""
        ck, out = self.checkpoint, []
        fix = f"run `make checkpoints`, or point --checkpoint (or ${CHECKPOINT_ENV}) at a complete checkpoint folder"
        if not ck.is_dir():
            return [f"Checkpoint folder {self.name} not found: {fix}."]
        needed = {"score table": (ck / LAYOUT.scores, "run `make scores`, or point --checkpoint (or "
                                  f"${CHECKPOINT_ENV}) at a complete checkpoint folder"),
                  "dacd model": (ck / LAYOUT.dacd / LAYOUT.dacd_config, fix),
                  "evaluation classifier": (ck / LAYOUT.evaluator / "config.json", fix)}
        out += [f"The {what} ({path.relative_to(ck)}) is missing from checkpoint {self.name}: {how}."
                for what, (path, how) in needed.items() if not path.is_file()]
        try:
            check_folder(ck)
        except DamagedWeightsError as e:
            message = str(e).replace(str(ck.resolve()), self.name).replace(str(ck), self.name)
            out.append(message[0].upper() + message[1:])
        try:
            self.require_real("train")
            self.require_real("test")
        except DatasetError as e:
            out.append(str(e))
        return out

    def require_real(self, split: str = "train") -> ImageDataset:
        """The real images of a split, or a DatasetError that says what needs them and the fix."""
        try:
            return self.dataset(split)
        except (DatasetError, FileNotFoundError) as e:
            raise DatasetError(f"The real Fashion-MNIST images are missing or unreadable, so the Real data tab, the "
                               f"real images of Difficulty factors and the real curve of Distributions cannot "
                               f"work: {e}") from e

    # ------------------------------------------------------------ resources
    @property
    def scores(self) -> pd.DataFrame:
        return self._get("scores", lambda: load_scores(self.checkpoint / LAYOUT.scores))

    def dataset(self, split: str) -> ImageDataset:
        return self._get(("data", split), lambda: load_dataset(self.data, split, self.data_dir))

    @property
    def class_names(self) -> list[str]:
        def names():
            t = self.scores
            pairs = t[["label", "class_name"]].drop_duplicates().sort_values("label")
            return pairs.class_name.tolist()

        return self._get("class_names", names)

    def class_index(self, name_or_index) -> int:
        return resolve_class(name_or_index, self.class_names)

    def _locate(self, image_id: str) -> tuple[ImageDataset, int]:
        split = str(image_id).split(":", 1)[0]
        if split not in ("train", "test"):
            raise ValueError(f"unknown image id {image_id!r}: ids look like 'train:123' or 'test:45'")
        ds = self.dataset(split)
        index = self._get(("index", split), lambda: {k: i for i, k in enumerate(ds.ids)})
        if image_id not in index:
            raise ValueError(f"no image with id {image_id!r} in the {split} split")
        return ds, index[image_id]

    def image(self, image_id: str) -> np.ndarray:
        """The uint8 (C, H, W) image with this id ("train:123", "test:7")."""
        ds, i = self._locate(image_id)
        return ds.images[i]

    def image_label(self, image_id: str) -> int:
        ds, i = self._locate(image_id)
        return int(ds.labels[i])

    # ------------------------------------------------------------ browse
    def browse(self, class_name, percentiles=BROWSE_PERCENTILES, split: str = "train") -> BrowseResult:
        """Real images of a class from easiest to hardest, at the given percentiles of s."""
        c = self.class_index(class_name)
        t = self.scores
        sub = t[(t.label == c) & (t.split == split)].sort_values(["s", "id"]).reset_index(drop=True)
        if sub.empty:
            raise ValueError(f"the score table has no {split} images of class {self.class_names[c]!r}")
        pcts = [float(p) for p in percentiles]
        if any(not 0 <= p <= 100 for p in pcts):
            raise ValueError(f"percentiles must lie in [0, 100], got {pcts}")
        pos = [min(len(sub) - 1, int(round(p / 100 * (len(sub) - 1)))) for p in pcts]
        rows = sub.iloc[pos]
        images = [self.image(i) for i in rows.id]
        captions = [f"p{p:g} · s={r.s:.3f} · predicted {r.pred_name} · {r.id}" for p, r in zip(pcts, rows.itertuples())]
        return BrowseResult(images, captions, rows)

    def hardest(self, class_name, n: int = 50, split: str = "train") -> pd.DataFrame:
        c = self.class_index(class_name)
        t = self.scores
        sub = t[(t.label == c) & (t.split == split)].sort_values("s", ascending=False).head(n)
        return sub[["id", "s", "pred_name", "confidence", "variability", "region"]].reset_index(drop=True)

    def real_at_difficulty(self, class_name, s_values, split: str = "train"):
        """For each s, the real image of the class whose score is closest (for side-by-side contrast)."""
        c = self.class_index(class_name)
        t = self.scores
        sub = t[(t.label == c) & (t.split == split)]
        out = []
        for s in s_values:
            r = sub.iloc[int(np.argmin(np.abs(sub.s.to_numpy() - s)))]
            out.append((self.image(r.id), f"real · s={r.s:.3f} (nearest to {s:.2f}) · {r.id}"))
        return out

    def count_near(self, class_name, s: float, width: float = 0.1, split: str = "train") -> int:
        """How many real images of the class have a score within ±width of s."""
        c = self.class_index(class_name)
        t = self.scores
        sub = t[(t.label == c) & (t.split == split)]
        return int(((sub.s - s).abs() <= width).sum())


# ---------------------------------------------------------------- generation

def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


EXACT = Selection(max_tries=6, tolerance=0.05, label_rule=True, pilot=0)  # the app's "exact difficulty" (per image)
DISTRIBUTION_SETS = ("requested", "dacd", "dacd exact", "baseline", "real")  # a Distributions result's sets, in order
NEAR_WIDTH, NEAR_MIN_COUNT = 0.05, 50  # "few real images near the requested s" below this count
CHUNK_SIZE = 32  # images per pipeline call
MODELS = {"dacd": LAYOUT.dacd, "baseline": LAYOUT.baseline}  # model kind -> its folder in the checkpoint


@dataclass
class Generated:
    images: list  # float (H, W, C) arrays in [0, 1]
    class_label: list[int]
    requested_s: list[float]
    conditioning_s: list[float]
    measured_s: list[float]
    predicted: list[str]
    seeds: list[int]
    settings: dict
    tries: list[int] | None = None  # exact difficulty: tries made per image (try k seeded from (seed, k))
    accepted: list[bool] | None = None  # exact difficulty: the kept try met the tolerance and the label rule

    def manifest(self, class_names) -> pd.DataFrame:
        exact = {} if self.tries is None else {"tries": self.tries, "accepted": self.accepted}
        return pd.DataFrame({
            "file": [f"{i:03d}.png" for i in range(len(self.images))],
            "class": [class_names[c] for c in self.class_label], "requested_s": self.requested_s,
            "conditioning_s": self.conditioning_s, "measured_s": self.measured_s, "predicted": self.predicted,
            "seed": self.seeds, **exact, **{k: [v] * len(self.images) for k, v in self.settings.items()},
        })


def app_sampling(steps=None, guidance_scale=None, difficulty_guidance_scale=None,
                 calibrated: bool = False) -> SamplingSettings:
    """Sampling settings within the app's limits (`APP_LIMITS`); None takes the project default."""
    settings = SamplingSettings(num_inference_steps=steps, guidance_scale=guidance_scale,
                                difficulty_guidance_scale=difficulty_guidance_scale, calibrated=bool(calibrated))
    for name in ("num_inference_steps", "guidance_scale", "difficulty_guidance_scale"):
        setattr(settings, name, APP_LIMITS[name].check(getattr(settings, name)))
    return settings


class Workbench(Explorer):
    """Explorer plus the checkpoint's pipelines (dacd, baseline) and evaluation classifier."""

    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def workers(self) -> int:
        """Threads one request samples with: every core when torch runs one thread per call (the
        app's default, `--threads 1`), else one (torch's own threads use the cores)."""
        return cpu_cores() if self.device() == "cpu" and torch.get_num_threads() == 1 else 1

    def pipeline(self, kind: str = "dacd"):
        if kind not in MODELS:
            raise ValueError(f"unknown model {kind!r}: 'dacd' or 'baseline'")

        def load():
            from .pipeline import DifficultyControlledPipeline  # diffusers: loaded with the first model

            folder = self.checkpoint / MODELS[kind]
            if not (folder / LAYOUT.dacd_config).is_file():
                raise FileNotFoundError(f"{folder} holds no trained {kind} model: run `make checkpoints`, or point "
                                        f"${CHECKPOINT_ENV} at a checkpoint folder that has one")
            dtype = torch.float16 if self.device() == "cuda" else torch.float32
            pipe = DifficultyControlledPipeline.from_pretrained(folder, dtype=dtype, device=self.device())
            pipe.set_progress_bar_config(disable=True)
            return pipe

        return self._get(("pipe", kind), load)

    def has_model(self, kind: str) -> bool:
        return kind in MODELS and (self.checkpoint / MODELS[kind] / LAYOUT.dacd_config).is_file()

    def has_calibration(self) -> bool:
        """Whether the dacd model ships a calibration curve (then the app asks for measured s by default)."""
        return (self.checkpoint / LAYOUT.dacd / LAYOUT.calibration).is_file()

    @property
    def evaluator(self) -> Classifier:
        return self._get("evaluator", lambda: Classifier.from_pretrained(self.checkpoint / LAYOUT.evaluator))

    def measure(self, images_hwc: np.ndarray, labels) -> tuple[np.ndarray, list[str]]:
        x = np.asarray(images_hwc, np.float32).transpose(0, 3, 1, 2)
        m, _ = evaluation.measure(self.evaluator, x, labels)
        names = self.class_names
        return m.measured_s.to_numpy(), [names[int(p)] for p in m.pred]

    def generate(self, class_name, difficulty: float, n: int = 8, seed: int = 0, *, steps: int | None = None,
                 guidance_scale: float | None = None, difficulty_guidance_scale: float | None = None,
                 prompt: str | None = None, calibrated: bool = False, exact: bool = False,
                 selection: Selection = EXACT, progress=None) -> Generated:
        """`exact`: each image is tried up to `selection.max_tries` times and kept when the scoring
        committee (classifier/ and classifier-2/) measures it within `selection.tolerance` of the
        request with every member still naming the class (`train/generate.py --select`, per image)."""
        c = self.class_index(class_name)
        s = APP_LIMITS["difficulty"].check(difficulty)
        n = APP_LIMITS["num_images"].check(n)
        seed = APP_LIMITS["seed"].check(seed)
        settings = app_sampling(steps, guidance_scale, difficulty_guidance_scale, calibrated)
        committee = self.committee() if exact else ()
        pipe = self.pipeline("dacd")
        if calibrated and pipe.calibration is None:
            raise ValueError("this checkpoint has no calibration curve (train/calibrate.py makes one); "
                             "switch 'calibrated' off")
        seeds = [seed + i for i in range(n)]
        select = dict(accept=committee_accept(committee, [c] * n, [s] * n, selection),
                      max_tries=selection.max_tries) if exact else {}
        out = sample(pipe, [c] * n, [s] * n, seeds, settings, prompts=[prompt] * n if prompt else None,
                     chunk_size=CHUNK_SIZE, workers=self.workers(), progress=progress, desc="generating", **select)
        measured, pred = self.measure(out.images, [c] * n)
        used = {"steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale,
                "difficulty_guidance_scale": settings.difficulty_guidance_scale, "scheduler": settings.scheduler,
                "prompt": prompt or pipe.class_prompt(c), "calibrated": bool(calibrated), "exact": bool(exact),
                "checkpoint": self.name}
        if exact:
            used.update(max_tries=selection.max_tries, tolerance=selection.tolerance)
        if calibrated:  # the curve holds at the settings it was fitted at ("" when they match)
            used["calibration_differences"] = "; ".join(pipe.calibration_differences(
                guidance_scale=settings.guidance_scale, difficulty_guidance_scale=settings.difficulty_guidance_scale,
                num_inference_steps=settings.num_inference_steps, scheduler=settings.scheduler))
        return Generated(list(out.images), [c] * n, [s] * n, list(out.conditioning_s), measured.tolist(), pred, seeds,
                         used, out.tries.tolist() if exact else None, out.accepted.tolist() if exact else None)

    def has_committee(self) -> bool:
        """Whether the checkpoint has the scoring classifier that exact difficulty selects with."""
        return (self.checkpoint / LAYOUT.classifier / "config.json").is_file()

    def committee(self) -> list[Classifier]:
        """The scoring committee: classifier/ (defines s) and classifier-2/ when shipped. The
        evaluation classifier is never a member: it judges."""
        if not self.has_committee():
            raise ValueError(f"Exact difficulty needs the checkpoint's scoring classifier ({LAYOUT.classifier}/), "
                             f"which {self.name} lacks: switch 'exact difficulty' off, or use a checkpoint that has "
                             f"one (train/score_difficulty.py writes it)")
        names = [n for n in COMMITTEE if n == LAYOUT.classifier or (self.checkpoint / n / "config.json").is_file()]
        return self._get(("committee", tuple(names)),
                         lambda: [Classifier.from_pretrained(self.checkpoint / name) for name in names])

    # ------------------------------------------------------------ edits of real images
    def edit_pipeline(self):
        """The dacd model as a `DifficultyControlledImg2ImgPipeline` (the same weights)."""
        def load():
            from .img2img import DifficultyControlledImg2ImgPipeline

            return DifficultyControlledImg2ImgPipeline.from_pipe(self.pipeline("dacd"))

        return self._get(("pipe", "edit"), load)

    def source_image(self, image_id: str | None = None, upload=None) -> tuple[np.ndarray, str, int | None]:
        """The image to edit as float (C, H, W) in [0, 1] at the model's size, a description, and
        its class id when it comes from the data: a real image by id, or an upload (file path, PIL
        or array; over 10 MB or unreadable refused)."""
        from .img2img import load_image, prepare_image

        image_id = (image_id or "").strip()
        if image_id and upload is not None:
            raise ValueError("give either an image id or an upload, not both")
        if not image_id and upload is None:
            raise ValueError("give a real image to start from: an image id such as train:123, or an upload")
        pipe = self.pipeline("dacd")
        size, chans = pipe.unet.config.sample_size * pipe.vae_scale_factor, pipe.vae.config.in_channels
        if image_id:
            image = self.image(image_id)
            return prepare_image(image.transpose(1, 2, 0), size, chans), image_id, self.image_label(image_id)
        if isinstance(upload, (str, Path)):
            upload = load_image(upload)
        return prepare_image(upload, size, chans), "your image", None

    def edits(self, image_id: str | None = None, upload=None, class_name=None, *, levels=EDIT_LEVELS,
              strength: float = EDIT_STRENGTH, seed: int = 0, steps: int | None = None, progress=None) -> dict:
        """One real item made easier and harder: edits at each requested s in `levels`, all from the
        same noise (`seed`), measured by the evaluation classifier, beside the item's own s. The
        class is the item's own for an image id (or `class_name`, to push it towards another class)."""
        strength = APP_LIMITS["strength"].check(strength)
        seed = APP_LIMITS["seed"].check(seed)
        levels = [APP_LIMITS["difficulty"].check(v) for v in levels]
        settings = app_sampling(steps)
        if strength * settings.num_inference_steps < 1:
            raise ValueError(f"strength {strength:g} x {settings.num_inference_steps} steps is less than one "
                             "denoising step: raise the strength or the steps")
        source, described, label = self.source_image(image_id, upload)
        if class_name not in (None, ""):
            label = self.class_index(class_name)
        if label is None:
            raise ValueError("an uploaded image needs a class: pick the class to edit it towards")
        n = len(levels)
        out = sample(self.edit_pipeline(), [label] * n, levels, [seed] * n, settings,
                     sources=[source.transpose(1, 2, 0)] * n, strength=strength, chunk_size=CHUNK_SIZE,
                     workers=self.workers(), progress=progress, desc="editing")
        measured, pred = self.measure(out.images, [label] * n)
        src_measured, src_pred = self.measure(source.transpose(1, 2, 0)[None], [label])
        score = self.scores[self.scores.id == image_id] if image_id else self.scores.iloc[:0]
        return {"source": source.transpose(1, 2, 0), "source_id": described, "label": label,
                "source_s": float(score.s.iloc[0]) if len(score) else None,
                "source_measured": float(src_measured[0]), "source_predicted": src_pred[0],
                "levels": list(levels), "images": list(out.images), "measured": measured.tolist(), "predicted": pred,
                "strength": strength, "seed": seed, "steps": settings.num_inference_steps}

    def sweep(self, class_name, seeds, columns: int = 8, *, difficulty_only: bool = False, steps: int | None = None,
              source_id: str | None = None, upload=None, strength: float = EDIT_STRENGTH, progress=None) -> dict:
        """Rows = seeds (noise fixed along a row), columns = s from easy to hard. With a real image
        (`source_id` or `upload`), every cell is an edit of that item at `strength`."""
        c = self.class_index(class_name)
        seeds = [APP_LIMITS["seed"].check(x) for x in seeds]
        APP_LIMITS["sweep_rows"].check(len(seeds))
        columns = APP_LIMITS["sweep_columns"].check(columns)
        settings = app_sampling(steps)
        edit = {}
        if (source_id or "").strip() or upload is not None:
            strength = APP_LIMITS["strength"].check(strength)
            if strength * settings.num_inference_steps < 1:
                raise ValueError(f"strength {strength:g} x {settings.num_inference_steps} steps is less than one "
                                 "denoising step: raise the strength or the steps")
            source, described, _ = self.source_image(source_id, upload)
            edit = {"sources": [source.transpose(1, 2, 0)] * (len(seeds) * columns), "strength": strength}
        self.require_real("train")  # before generating: the real row needs it
        s_values = np.round(np.linspace(0.05, 0.95, columns), 3)
        labels = [c] * (len(seeds) * columns)
        s = np.tile(s_values, len(seeds)).tolist()
        row_seeds = np.repeat(seeds, columns).tolist()
        imgs = sample(self.edit_pipeline() if edit else self.pipeline("dacd"), labels, s, row_seeds, settings,
                      chunk_size=CHUNK_SIZE, workers=self.workers(), progress=progress,
                      desc="sweep", difficulty_only=bool(difficulty_only), **edit).images
        measured, pred = self.measure(imgs, labels)
        result = {"s_values": s_values.tolist(), "seeds": seeds, "images": imgs.reshape(len(seeds), columns, *imgs.shape[1:]),
                  "measured": measured.reshape(len(seeds), columns), "predicted": np.array(pred).reshape(len(seeds), columns),
                  "real": self.real_at_difficulty(c, s_values)}
        if edit:
            result.update(source=edit["sources"][0], source_id=described, strength=edit["strength"])
        if self.has_model("baseline"):
            b = sample(self.pipeline("baseline"), [c] * len(seeds), [0.5] * len(seeds), seeds, settings,
                       chunk_size=CHUNK_SIZE, workers=self.workers()).images
            result["baseline"] = b
            result["baseline_measured"] = self.measure(b, [c] * len(seeds))[0]
        return result

    def distribution(self, mu: float = DIFFICULTY.mu, sigma: float = DIFFICULTY.sigma, n: int = 200, class_name=None, seed: int = 0,
                     progress=None, *, exact: bool = False, selection: Selection = EXACT) -> dict:
        """Requested s ~ N(mu, sigma), and measured s for dacd, the baseline and real test images.

        `exact` adds "dacd exact": the same rows (same seeds: try 1 is the plain dacd image) with
        Generate's exact difficulty, each tried up to `selection.max_tries` times and kept when the
        scoring committee measures it within `selection.tolerance` of its request, every member
        still naming the class (else the nearest try); `exact_tries` and `exact_accepted` say what
        that cost and how often it succeeded (`exact_max_tries`, `exact_tolerance`: the rule). All
        sets sample uncalibrated at the default settings."""
        mu = APP_LIMITS["mu"].check(mu)
        sigma = APP_LIMITS["sigma"].check(sigma)
        n = APP_LIMITS["distribution_n"].check(n)
        seed = APP_LIMITS["seed"].check(seed)
        classes = list(range(len(self.class_names))) if class_name in (None, "", "all") else [self.class_index(class_name)]
        test = self.require_real("test")  # before generating: the real curve needs it
        committee = self.committee() if exact else ()  # refused before any work when it is missing
        rng = np.random.default_rng(seed)
        labels = rng.choice(classes, n)
        req = evaluation.draw_difficulties(n, mu, sigma, seed)
        seeds = (seed * 10_000 + np.arange(n)).tolist()
        out = {"requested": req, "labels": labels}
        runs = [("dacd", "dacd", {})]
        if exact:
            runs.append(("dacd exact", "dacd", dict(
                accept=committee_accept(committee, labels.tolist(), req.tolist(), selection),
                max_tries=selection.max_tries)))
        if self.has_model("baseline"):
            runs.append(("baseline", "baseline", {}))
        for name, kind, select in runs:
            res = sample(self.pipeline(kind), labels.tolist(), req.tolist(), seeds, SamplingSettings(),
                         chunk_size=CHUNK_SIZE, workers=1, progress=progress, desc=name, **select)
            # workers=1: a comparison is the long job; on its own queue and one core it leaves the
            # other cores to Generate and Sweep (bench/app_latency.py: Generate during Distributions)
            out[name] = self.measure(res.images, labels)[0]
            if select:
                out.update(exact_tries=float(np.mean(res.tries)), exact_accepted=float(np.mean(res.accepted)),
                           exact_max_tries=selection.max_tries, exact_tolerance=selection.tolerance)
        t = self.scores
        te = t[t.split == "test"].set_index("id").loc[list(test.ids)].reset_index()
        pos = evaluation.real_ceiling_sample(te, req, labels)
        m, _ = self._get("real_test_measured", lambda: evaluation.measure(self.evaluator, test.images, test.labels))
        out["real"] = m.measured_s.to_numpy()[pos]
        out["shares"] = {k: evaluation.medium_share(out[k], MEDIUM_BAND) for k in DISTRIBUTION_SETS if k in out}
        out["band"] = MEDIUM_BAND
        return out

    # ------------------------------------------------------------ the default Distributions view
    def distribution_fingerprint(self, view: dict) -> str:
        """What a Distributions result depends on: the models' and the evaluator's content, the
        score table, the view's settings and the sampling defaults."""
        h = hashlib.sha256(json.dumps({"view": view, "sampling": SamplingSettings().as_config(), "dacd": __version__},
                                      sort_keys=True).encode())
        test = self.dataset("test")  # the real curve's images
        h.update(f"{test.name}:{len(test)}".encode() + np.ascontiguousarray(test.labels).tobytes())
        for kind in ("dacd", "baseline"):
            if self.has_model(kind):
                # uncalibrated sampling: a refitted calibration curve leaves the view as it is
                h.update(model_fingerprint(self.checkpoint / MODELS[kind], skip=CURVE_FILES).encode())
        h.update(model_fingerprint(self.checkpoint / LAYOUT.evaluator).encode())
        h.update((self.checkpoint / LAYOUT.scores).read_bytes())
        return h.hexdigest()[:16]

    def save_default_distribution(self, progress=None) -> Path:
        """Compute the default view (DEFAULT_VIEW) and store it beside the checkpoint with its fingerprint."""
        result = self.distribution(**DEFAULT_VIEW, progress=progress)
        data = {"fingerprint": self.distribution_fingerprint(DEFAULT_VIEW), "view": DEFAULT_VIEW,
                "result": {k: (np.asarray(v).tolist() if k not in ("shares", "band") else v) for k, v in result.items()}}
        path = self.checkpoint / LAYOUT.distribution_view
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=0) + "\n")
        tmp.replace(path)
        with self._lock:
            self._cache.pop("default_distribution", None)
        return path

    def default_distribution(self) -> dict | None:
        """The stored default view, when it was computed from exactly these models and settings;
        None (with a log line saying why) otherwise, and the app computes views live. Checked once
        per Workbench (the fingerprint reads every model file)."""
        return self._get("default_distribution", self._load_default_distribution)

    def _load_default_distribution(self) -> dict | None:
        path = self.checkpoint / LAYOUT.distribution_view
        if not path.is_file():
            log.info("no %s in %s: the Distributions tab computes its first view live", path.name, self.name)
            return None
        try:
            data = json.loads(path.read_text())
            ok = (isinstance(data, dict) and isinstance(data.get("result"), dict) and data.get("view") == DEFAULT_VIEW
                  and data.get("fingerprint") == self.distribution_fingerprint(DEFAULT_VIEW))
        except (ValueError, OSError, DatasetError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("ignoring %s (%s): rebuild it with train/distribution_view.py", path.name, e)
            return None
        if not ok:
            log.warning("ignoring %s: it was computed from other models or settings than this checkpoint's; "
                        "rebuild it with train/distribution_view.py", path.name)
            return None
        return data["result"]


DEFAULT_VIEW = {"mu": DIFFICULTY.mu, "sigma": DIFFICULTY.sigma, "n": 200, "class_name": "all", "seed": 0}
