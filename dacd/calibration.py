"""Calibration: requested difficulty -> measured difficulty, per class, and its inverse.

`Calibration.fit` takes, for each class, the mean measured `s` of images generated at a grid
of requested `s`, measured by the *scoring* classifier (the one that defines `s`), so the
evaluation classifier that judges calibrated sampling never fitted it. `train/calibrate.py`
fits and stores it in a dacd folder. With `calibrated=True` the pipeline inverts the curve:
the user asks for a *measured* difficulty and the encoder is conditioned on the value that
produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import isotonic_regression

from .defaults import LAYOUT

CALIBRATION_NAME = LAYOUT.calibration
IMG2IMG_PATTERN = "calibration-img2img-strength{strength:g}.json"  # curves for edits, one per strength
IMG2IMG_GLOB = IMG2IMG_PATTERN.replace("{strength:g}", "*")
CURVE_FILES = (CALIBRATION_NAME, IMG2IMG_GLOB)  # every curve a folder may hold
MONOTONE_RULES = ("running-max", "isotonic")  # how a noisy curve is made non-decreasing (meta "monotone")
# sampling settings a curve holds only at (meta key -> name in messages); the measured dial moves with
# each (bench/results/controllability-dg: difficulty guidance 5, 8, 12 give Spearman 0.51, 0.87, 0.78)
FIT_SETTINGS = {"steps": "steps", "scheduler": "scheduler", "guidance_scale": "text guidance",
                "difficulty_guidance_scale": "difficulty guidance"}


# a class whose curve spans less measured s than this is reported as flat (train/calibrate.py)
FLAT_SPAN = 0.2


class CalibrationSettingsWarning(UserWarning):
    """Calibrated sampling at settings other than those its curve was fitted at."""


def img2img_calibration_name(strength: float) -> str:
    """The file name of the curve fitted for img2img edits at `strength`."""
    return IMG2IMG_PATTERN.format(strength=float(strength))


@dataclass
class Calibration:
    requested: list[float]  # grid of requested s (increasing)
    measured: dict[str, list[float]]  # class index (as str) -> mean measured s at each grid value
    meta: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, rows: pd.DataFrame, meta: dict | None = None) -> "Calibration":
        """The curve from generated images: `rows` has one row per image with its class `label`,
        `requested_s` (a grid of values shared by all classes) and `measured_s`."""
        missing = [c for c in ("label", "requested_s", "measured_s") if c not in rows.columns]
        if missing:
            raise ValueError(f"Calibration.fit needs columns label, requested_s, measured_s; {missing} missing")
        means = rows.groupby(["label", "requested_s"]).measured_s.mean()
        grid = sorted(rows.requested_s.unique())
        measured = {}
        for c, sub in means.groupby(level=0):
            if len(sub) != len(grid):
                raise ValueError(f"class {c} lacks images at some requested s of the grid {grid}")
            measured[str(int(c))] = [float(v) for v in sub.sort_index(level=1).to_numpy()]
        return cls([float(v) for v in grid], measured, dict(meta or {}))

    @property
    def monotone(self) -> str:
        """How the measured means are made non-decreasing: "running-max" (the default, for curves
        that name no rule) or "isotonic" (least squares; each pooled run is one knot at its centre,
        so both the curve and its inverse interpolate between run centres)."""
        rule = self.meta.get("monotone", "running-max")
        if rule not in MONOTONE_RULES:
            raise ValueError(f"calibration meta names monotone rule {rule!r}; known: {', '.join(MONOTONE_RULES)}")
        return rule

    @classmethod
    def pool(cls, curves: list["Calibration"], monotone: str | None = None) -> "Calibration":
        """One curve from several fitted on the same grid and settings (other seeds): per class
        and grid value, the mean weighted by each curve's images per cell (`n_per_cell` in every
        curve's meta, or in none: equal weights). `monotone` None keeps the first curve's rule."""
        if not curves:
            raise ValueError("no curves to pool")
        first = curves[0]
        monotone = first.monotone if monotone is None else monotone
        same = ("measured_by", "steps", "scheduler", "guidance_scale", "difficulty_guidance_scale",
                "img2img_strength")
        for c in curves[1:]:
            if c.requested != first.requested or sorted(c.measured) != sorted(first.measured):
                raise ValueError("curves differ in their grid of requested s or their classes")
            diff = [k for k in same if c.meta.get(k) != first.meta.get(k)]
            if diff:
                raise ValueError(f"curves were fitted with different {', '.join(diff)}")
        n = [c.meta.get("n_per_cell") for c in curves]
        if any(v is None for v in n) and any(v is not None for v in n):
            raise ValueError("some curves record their images per cell (n_per_cell) and some do not: "
                             "they cannot be weighted together")
        if any(v is not None and not (isinstance(v, (int, float)) and v > 0) for v in n):
            raise ValueError(f"n_per_cell must be a positive number in every curve, got {n}")
        weights = [1.0] * len(curves) if n[0] is None else [float(v) for v in n]
        measured = {k: [float(v) for v in np.average([c.measured[k] for c in curves], axis=0, weights=weights)]
                    for k in first.measured}
        seeds = [x for c in curves for x in (c.meta.get("seed") if isinstance(c.meta.get("seed"), list)
                                             else [c.meta.get("seed")])]
        meta = {k: v for k, v in first.meta.items() if k not in ("n_per_cell", "sources")}
        meta.update(seed=seeds, monotone=monotone, **({} if n[0] is None else {"n_per_cell": int(sum(weights))}))
        if any("sources" in c.meta for c in curves):  # edits: each curve's real images
            meta["sources"] = [c.meta.get("sources") for c in curves]
        out = cls(list(first.requested), measured, meta)
        out.monotone  # noqa: B018 -- validates the rule
        return out

    def curve(self, class_label: int) -> tuple[np.ndarray, np.ndarray]:
        """The non-decreasing curve the pipeline interpolates, as (requested, measured) knots: the
        grid with the running max of the means, or for "isotonic" the centre of each pooled run."""
        key = str(int(class_label))
        if key not in self.measured:
            raise ValueError(f"calibration has no curve for class {class_label}")
        x = np.asarray(self.requested, float)
        raw = np.asarray(self.measured[key], float)
        if self.monotone == "running-max":  # so the inverse is a function
            return x, np.maximum.accumulate(raw)
        fit = isotonic_regression(raw)  # pool adjacent violators; `blocks` bound each pooled run
        edges = fit.blocks
        centres = np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
        return centres, fit.x[edges[:-1]]

    def invert(self, class_label: int, target: float) -> float:
        """The requested s whose images measure `target` on average, clipped to the curve's first and
        last knots (the grid's ends, or for "isotonic" the centres of the first and last pooled runs);
        a flat curve says nothing, so the request is passed on, clipped to the grid."""
        x, y = self.curve(class_label)
        if y[-1] - y[0] < 1e-6:
            return float(np.clip(target, self.requested[0], self.requested[-1]))
        # np.interp needs strictly increasing xp: drop flat steps, keep their first point.
        keep = np.concatenate([[True], np.diff(y) > 1e-9])
        return float(np.interp(target, y[keep], x[keep]))

    def reach(self, class_label: int) -> tuple[float, float]:
        """The measured s at the first and last knot of a class's (non-decreasing) curve, the range
        calibrated requests can reach: requests outside it are clipped to those knots."""
        _, y = self.curve(class_label)
        return float(y[0]), float(y[-1])

    def flat_classes(self, min_span: float = FLAT_SPAN) -> dict[int, tuple[float, float]]:
        """Classes whose curve spans less than `min_span` of measured s (class -> its reach): the
        dial barely moves them, so their calibrated images measure about the same at every request.
        Seen in weak training runs of rare-end classes (bench/results/controllability-spread: a
        Trouser curve of 0.88-0.95 and a Bag curve of 0.00-0.09, where every class of the shipped run
        spans at least 0.35; both printed by bench/results/controllability-classbalance/reach.py)."""
        out = {}
        for key in sorted(self.measured, key=int):
            lo, hi = self.reach(int(key))
            if not hi - lo >= min_span:  # a NaN mean counts as flat
                out[int(key)] = (lo, hi)
        return out

    def setting_differences(self, **used) -> list[str]:
        """The sampling settings in `used` (keys of `FIT_SETTINGS`) that differ from those the curve
        was fitted at, e.g. "difficulty guidance 12 (curve: 8)". Settings the curve's meta does not
        record, or passed as None, are not compared."""
        unknown = sorted(set(used) - set(FIT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; known: {', '.join(FIT_SETTINGS)}")
        def text(v):  # 15 and 15.0 alike
            return v if isinstance(v, str) else f"{float(v):g}"

        return [f"{name} {text(used[key])} (curve: {text(self.meta[key])})" for key, name in FIT_SETTINGS.items()
                if used.get(key) is not None and self.meta.get(key) is not None
                and text(used[key]) != text(self.meta[key])]

    def forward(self, class_label: int, requested: float) -> float:
        x, y = self.curve(class_label)
        return float(np.interp(requested, x, y))

    def save(self, folder: str | Path, name: str = CALIBRATION_NAME) -> Path:
        Path(folder).mkdir(parents=True, exist_ok=True)  # e.g. train/calibrate.py --out runs/cal-seed2
        path = Path(folder) / name
        path.write_text(json.dumps({"requested": list(map(float, self.requested)),
                                    "measured": {k: list(map(float, v)) for k, v in self.measured.items()},
                                    "meta": self.meta}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str = CALIBRATION_NAME) -> "Calibration | None":
        path = Path(folder) / name
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            return cls(d["requested"], d["measured"], d.get("meta", {}))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"calibration file {path} is invalid ({e}); rerun train/calibrate.py to rewrite it "
                             "(bench/controllability.py measures how well it works)") from e


def load_img2img_calibrations(folder: str | Path) -> dict[float, Calibration]:
    """Every curve fitted for img2img edits in a dacd folder, by strength (rounded to 6 digits)."""
    curves = {}
    for path in sorted(Path(folder).glob(IMG2IMG_GLOB)):
        curve = Calibration.load(folder, name=path.name)
        strength = curve.meta.get("img2img_strength")
        if not isinstance(strength, (int, float)) or not 0 < float(strength) <= 1:
            raise ValueError(f"calibration file {path} names no img2img_strength in (0, 1] in its meta; rerun "
                             "train/calibrate.py --img2img-strength S to rewrite it")
        curves[round(float(strength), 6)] = curve
    return curves
