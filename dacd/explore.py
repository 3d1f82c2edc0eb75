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
