"""What the app does, without the app: one lazily loading owner of a checkpoint folder
(score table, real images, pipelines, evaluation classifier) and the operations the
tabs call. Thread-safe: each resource is loaded once, under a lock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import ImageDataset, load_dataset, resolve_class
from .difficulty import load_scores

CHECKPOINT_ENV = "DACD_CHECKPOINT"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-mnist"
BROWSE_PERCENTILES = (0, 10, 25, 50, 75, 90, 95, 99, 100)


@dataclass
class BrowseResult:
    images: list  # uint8 (C, H, W) arrays
    captions: list[str]
    rows: pd.DataFrame  # the chosen images' rows of the score table


class Explorer:
    """Owns one checkpoint folder's resources, loads each on first use."""

    def __init__(self, checkpoint: str | Path | None = None, data: str = "fashion-mnist", data_dir=None):
        self.checkpoint = Path(checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)
        self.data, self.data_dir = data, data_dir
        self._lock = threading.RLock()
        self._cache: dict = {}

    def _get(self, key, loader):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = loader()
            return self._cache[key]

    # ------------------------------------------------------------ resources
    @property
    def scores(self) -> pd.DataFrame:
        return self._get("scores", lambda: load_scores(self.checkpoint / "scores.parquet"))

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

    def image(self, image_id: str) -> np.ndarray:
        """The uint8 (C, H, W) image with this id ("train:123", "test:7")."""
        split = str(image_id).split(":", 1)[0]
        if split not in ("train", "test"):
            raise ValueError(f"unknown image id {image_id!r}: ids look like 'train:123' or 'test:45'")
        ds = self.dataset(split)
        index = self._get(("index", split), lambda: {k: i for i, k in enumerate(ds.ids)})
        if image_id not in index:
            raise ValueError(f"no image with id {image_id!r} in the {split} split")
        return ds.images[index[image_id]]

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
            out.append((self.image(r.id), f"real · s={r.s:.3f} · {r.id}"))
        return out

    def count_near(self, class_name, s: float, width: float = 0.1, split: str = "train") -> int:
        """How many real images of the class have a score within ±width of s."""
        c = self.class_index(class_name)
        t = self.scores
        sub = t[(t.label == c) & (t.split == split)]
        return int(((sub.s - s).abs() <= width).sum())


# ---------------------------------------------------------------- generation

GENERATE_MAX_IMAGES = 16
SWEEP_MAX_ROWS, SWEEP_MAX_COLS = 8, 12
DISTRIBUTION_MAX_N = 2000
MAX_SEED = 2**31 - 1
NEAR_WIDTH, NEAR_MIN_COUNT = 0.05, 50  # "few real images near the requested s" below this count


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

    def manifest(self, class_names) -> pd.DataFrame:
        return pd.DataFrame({
            "file": [f"{i:03d}.png" for i in range(len(self.images))],
            "class": [class_names[c] for c in self.class_label], "requested_s": self.requested_s,
            "conditioning_s": self.conditioning_s, "measured_s": self.measured_s, "predicted": self.predicted,
            "seed": self.seeds, **{k: [v] * len(self.images) for k, v in self.settings.items()},
        })


def check_number(name: str, value, lo: float, hi: float, integer: bool = False) -> float:
    """A clear ValueError for anything but a finite number in [lo, hi] (integers if asked)."""
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}") from None
    if math.isnan(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if integer and v != int(v):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(v) if integer else v


class Generator(Explorer):
    """Explorer plus the checkpoint's pipelines (dacd, baseline) and evaluation classifier."""

    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def pipeline(self, kind: str = "dacd"):
        if kind not in ("dacd", "baseline"):
            raise ValueError(f"unknown model {kind!r}: 'dacd' or 'baseline'")

        def load():
            import torch

            from .pipeline import DifficultyControlledPipeline

            folder = self.checkpoint / kind
            if not (folder / "dacd_config.json").is_file():
                raise FileNotFoundError(f"{folder} holds no trained {kind} model: run `make checkpoints`, or point "
                                        f"${CHECKPOINT_ENV} at a checkpoint folder that has one")
            dtype = torch.float16 if self.device() == "cuda" else torch.float32
            pipe = DifficultyControlledPipeline.from_pretrained(folder, dtype=dtype, device=self.device())
            pipe.set_progress_bar_config(disable=True)
            return pipe

        return self._get(("pipe", kind), load)

    def has_model(self, kind: str) -> bool:
        return (self.checkpoint / kind / "dacd_config.json").is_file()

    def has_calibration(self) -> bool:
        """Whether the dacd model ships a calibration curve (then the app asks for measured s by default)."""
        return (self.checkpoint / "dacd" / "calibration.json").is_file()

    @property
    def evaluator(self):
        from .classifier import Classifier

        return self._get("evaluator", lambda: Classifier.from_pretrained(self.checkpoint / "evaluator"))

    def measure(self, images_hwc: np.ndarray, labels) -> tuple[np.ndarray, list[str]]:
        from .evaluation import measure

        x = np.asarray(images_hwc, np.float32).transpose(0, 3, 1, 2)
        m, _ = measure(self.evaluator, x, labels)
        names = self.class_names
        return m.measured_s.to_numpy(), [names[int(p)] for p in m.pred]

    def _sample(self, kind, labels, s, seeds, progress=None, desc="generating", **kw):
        """Generate in chunks, one generator per image; `progress(fraction, desc)` if given."""
        import torch

        pipe = self.pipeline(kind)
        out, cond = [], []
        chunk = 32
        for i in range(0, len(labels), chunk):
            if progress is not None:
                progress(i / len(labels), desc)
            gens = [torch.Generator().manual_seed(int(x)) for x in seeds[i:i + chunk]]
            kwargs = dict(kw)
            if not pipe.has_difficulty:
                kwargs.pop("difficulty_guidance_scale", None)
                kwargs.pop("difficulty_only", None)
                kwargs.pop("calibrated", None)
            res = pipe(list(labels[i:i + chunk]), list(s[i:i + chunk]), generator=gens, output_type="np", **kwargs)
            out.append(res.images)
            cond += res.conditioning_difficulties
        if progress is not None:
            progress(1.0, desc)
        return np.concatenate(out), cond

    def generate(self, class_name, difficulty: float, n: int = 8, seed: int = 0, *, steps: int | None = None,
                 guidance_scale: float | None = None, difficulty_guidance_scale: float | None = None,
                 prompt: str | None = None, calibrated: bool = False, progress=None) -> Generated:
        from .pipeline import DEFAULTS

        c = self.class_index(class_name)
        s = check_number("difficulty", difficulty, 0.0, 1.0)
        n = check_number("number of images", n, 1, GENERATE_MAX_IMAGES, integer=True)
        seed = check_number("seed", seed, 0, MAX_SEED, integer=True)
        steps = check_number("steps", steps or DEFAULTS.num_inference_steps, 1, 100, integer=True)
        g = check_number("text guidance", DEFAULTS.guidance_scale if guidance_scale is None else guidance_scale, 0, 30)
        gd = check_number("difficulty guidance",
                          DEFAULTS.difficulty_guidance_scale if difficulty_guidance_scale is None
                          else difficulty_guidance_scale, 0, 30)
        pipe = self.pipeline("dacd")
        if calibrated and pipe.calibration is None:
            raise ValueError("this checkpoint has no calibration curve (bench/controllability.py "
                             "--write-calibration makes one); switch 'calibrated' off")
        seeds = [seed + i for i in range(n)]
        imgs, cond = self._sample("dacd", [c] * n, [s] * n, seeds, progress, num_inference_steps=steps,
                                  guidance_scale=g, difficulty_guidance_scale=gd, prompt=(prompt or None),
                                  calibrated=calibrated)
        measured, pred = self.measure(imgs, [c] * n)
        settings = {"steps": steps, "guidance_scale": g, "difficulty_guidance_scale": gd,
                    "scheduler": DEFAULTS.scheduler, "prompt": prompt or pipe.class_prompt(c),
                    "calibrated": bool(calibrated), "checkpoint": str(self.checkpoint)}
        return Generated(list(imgs), [c] * n, [s] * n, list(cond), measured.tolist(), pred, seeds, settings)

    def sweep(self, class_name, seeds, columns: int = 8, *, difficulty_only: bool = False, steps: int | None = None,
              progress=None) -> dict:
        """Rows = seeds (noise fixed along a row), columns = s from easy to hard."""
        from .pipeline import DEFAULTS

        c = self.class_index(class_name)
        seeds = [check_number("seed", x, 0, MAX_SEED, integer=True) for x in seeds]
        if not 1 <= len(seeds) <= SWEEP_MAX_ROWS:
            raise ValueError(f"a sweep takes 1 to {SWEEP_MAX_ROWS} seeds (rows), got {len(seeds)}")
        columns = check_number("columns", columns, 2, SWEEP_MAX_COLS, integer=True)
        steps = check_number("steps", steps or DEFAULTS.num_inference_steps, 1, 100, integer=True)
        s_values = np.round(np.linspace(0.05, 0.95, columns), 3)
        labels = [c] * (len(seeds) * columns)
        s = np.tile(s_values, len(seeds)).tolist()
        row_seeds = np.repeat(seeds, columns).tolist()
        imgs, _ = self._sample("dacd", labels, s, row_seeds, progress, "sweep", num_inference_steps=steps,
                               difficulty_only=difficulty_only)
        measured, pred = self.measure(imgs, labels)
        result = {"s_values": s_values.tolist(), "seeds": seeds, "images": imgs.reshape(len(seeds), columns, *imgs.shape[1:]),
                  "measured": measured.reshape(len(seeds), columns), "predicted": np.array(pred).reshape(len(seeds), columns),
                  "real": self.real_at_difficulty(c, s_values)}
        if self.has_model("baseline"):
            b, _ = self._sample("baseline", [c] * len(seeds), [0.5] * len(seeds), seeds, None,
                                num_inference_steps=steps)
            result["baseline"] = b
            result["baseline_measured"] = self.measure(b, [c] * len(seeds))[0]
        return result

    def distribution(self, mu: float = 0.5, sigma: float = 0.1, n: int = 200, class_name=None, seed: int = 0,
                     progress=None) -> dict:
        """Requested s ~ N(mu, sigma), and measured s for dacd, the baseline and real test images."""
        from .evaluation import MEDIUM_BAND, draw_difficulties, measure, medium_share, real_ceiling_sample

        mu = check_number("mu", mu, 0.0, 1.0)
        sigma = check_number("sigma", sigma, 0.0, 1.0)
        n = check_number("N", n, 1, DISTRIBUTION_MAX_N, integer=True)
        seed = check_number("seed", seed, 0, MAX_SEED, integer=True)
        classes = list(range(len(self.class_names))) if class_name in (None, "", "all") else [self.class_index(class_name)]
        rng = np.random.default_rng(seed)
        labels = rng.choice(classes, n)
        req = draw_difficulties(n, mu, sigma, seed)
        seeds = (seed * 10_000 + np.arange(n)).tolist()
        out = {"requested": req, "labels": labels}
        imgs, _ = self._sample("dacd", labels.tolist(), req.tolist(), seeds, progress, "dacd")
        out["dacd"] = self.measure(imgs, labels)[0]
        if self.has_model("baseline"):
            b, _ = self._sample("baseline", labels.tolist(), req.tolist(), seeds, progress, "baseline")
            out["baseline"] = self.measure(b, labels)[0]
        test = self.dataset("test")
        t = self.scores
        te = t[t.split == "test"].set_index("id").loc[list(test.ids)].reset_index()
        pos = real_ceiling_sample(te, req, labels)
        m, _ = self._get("real_test_measured", lambda: measure(self.evaluator, test.images, test.labels))
        out["real"] = m.measured_s.to_numpy()[pos]
        out["shares"] = {k: medium_share(v) for k, v in out.items() if k in ("requested", "dacd", "baseline", "real")}
        out["band"] = MEDIUM_BAND
        return out
