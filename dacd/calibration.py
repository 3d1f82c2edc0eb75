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

from .defaults import LAYOUT

CALIBRATION_NAME = LAYOUT.calibration
IMG2IMG_PATTERN = "calibration-img2img-strength{strength:g}.json"  # curves for edits, one per strength


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

    def curve(self, class_label: int) -> tuple[np.ndarray, np.ndarray]:
        key = str(int(class_label))
        if key not in self.measured:
            raise ValueError(f"calibration has no curve for class {class_label}")
        x = np.asarray(self.requested, float)
        # Enforce a non-decreasing curve (running max), so the inverse is a function.
        y = np.maximum.accumulate(np.asarray(self.measured[key], float))
        return x, y

    def invert(self, class_label: int, target: float) -> float:
        """The requested s whose images measure `target` on average (clipped to the grid)."""
        x, y = self.curve(class_label)
        if y[-1] - y[0] < 1e-6:
            return float(np.clip(target, x[0], x[-1]))
        # np.interp needs strictly increasing xp: drop flat steps, keep their first point.
        keep = np.concatenate([[True], np.diff(y) > 1e-9])
        return float(np.interp(target, y[keep], x[keep]))

    def forward(self, class_label: int, requested: float) -> float:
        x, y = self.curve(class_label)
        return float(np.interp(requested, x, y))

    def save(self, folder: str | Path, name: str = CALIBRATION_NAME) -> Path:
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
    for path in sorted(Path(folder).glob(IMG2IMG_PATTERN.replace("{strength:g}", "*"))):
        curve = Calibration.load(folder, name=path.name)
        strength = curve.meta.get("img2img_strength")
        if not isinstance(strength, (int, float)) or not 0 < float(strength) <= 1:
            raise ValueError(f"calibration file {path} names no img2img_strength in (0, 1] in its meta; rerun "
                             "train/calibrate.py --img2img-strength S to rewrite it")
        curves[round(float(strength), 6)] = curve
    return curves
