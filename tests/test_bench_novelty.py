"""bench/novelty.py: how far an added set's images lie from the real subset they join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_module

from dacd.data import load_dataset, stratified_subset
from dacd.generation import MANIFEST_NAME, _png_bytes

SCRIPT = Path(__file__).parents[1] / "bench" / "novelty.py"


def load():
    return load_module(SCRIPT)


def write_set(folder: Path, images: np.ndarray, labels: np.ndarray, anchors=None) -> Path:
    """A finished generated set as train/generate.py lays it out (PNGs + manifest.parquet)."""
    folder.mkdir(parents=True)
    paths = [f"{i}.png" for i in range(len(images))]
    for p, im in zip(paths, images):
        (folder / p).write_bytes(_png_bytes(im.transpose(1, 2, 0)))
    pd.DataFrame({"id": range(len(images)), "label": labels, "path": paths,
                  "anchor_id": anchors if anchors is not None else [""] * len(images)}).to_parquet(folder / MANIFEST_NAME)
    return folder


def test_distances_per_class():
    nv = load()
    subset = np.zeros((2, 1, 2, 2), np.uint8)
    subset[1] = 255
    labels = np.array([0, 1])
    images = np.stack([subset[0], subset[0]])  # the second is class 1's: its nearest class-1 image is all white
    d = nv.distances(images, np.array([0, 1]), subset, labels)
    assert d[0] == pytest.approx(0) and d[1] == pytest.approx(2.0)  # sqrt(4 pixels x 1^2)


def test_copies_and_edits_against_the_reference(tmp_path, fake_fmnist):
    nv = load()
    train = load_dataset("fashion-mnist", "train", fake_fmnist)
    idx = stratified_subset(train.labels, 0.5, 0)
    copies = write_set(tmp_path / "copies", train.images[idx[:40]], train.labels[idx[:40]],
                       anchors=list(train.ids[idx[:40]]))
    noisy = np.clip(train.images[idx[:40]].astype(int) + 40, 0, 255).astype(np.uint8)
    edits = write_set(tmp_path / "edits", noisy, train.labels[idx[:40]], anchors=list(train.ids[idx[:40]]))
    nv.main([str(copies), str(edits), "--data-dir", str(fake_fmnist), "--real-fraction", "0.5",
             "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "novelty.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    assert [float(v) for v in rows["copies"][1:4]] == [0.0, 0.0, 0.0]  # copies of subset images, their own anchors
    assert float(rows["edits"][3]) > 0 and float(rows["edits"][1]) <= float(rows["edits"][3]) + 1e-6
    ref = rows["real images outside the subset (reference)"]
    assert int(ref[0]) == 40 and float(ref[1]) > 0 and ref[3].strip() == "—"
    with pytest.raises(SystemExit, match="no manifest.parquet"):
        nv.main([str(tmp_path / "nothing"), "--data-dir", str(fake_fmnist)])
