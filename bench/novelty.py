#!/usr/bin/env python
"""How new an added set's images are beside the real subset they join: per set, the pixel distance
from each image to the nearest real-subset image of its class, and (edits, sampling `anchored` or
`anchored-pooled`) to the real image it was edited from.

    python bench/novelty.py runs/downstream/synthetic/dacd-anchored-mu-pooled-g1d3-mu0.5-36ddce8f \\
        runs/downstream/synthetic/dacd-mu-pooled-g1d3-mu0.5-090153d1 --out bench/results/novelty

The reference row is real images that are *not* in the subset, drawn at random per class in the
first set's class counts (what the real-random arm adds): how far one real item lies from its
nearest other real item. A set whose images sit much nearer the subset than that adds near-copies
of what the classifier already sees (the real-duplicate arm, distance 0, is the limit). Distances
are L2 over pixels in [0, 1] (a 28 x 28 Fashion-MNIST image: 784 values), as
`bench/controllability.py` measures memorisation. The subset is train/downstream.py's
(`--real-fraction`, `--real-seed`). Reads only; no model runs. Writes novelty.md to --out when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dacd.data import load_dataset, stratified_subset
from dacd.evaluation import emit_report, markdown_table, nearest_distance
from dacd.generation import load_generated_images, load_manifest


def distances(images: np.ndarray, labels: np.ndarray, subset: np.ndarray, subset_labels: np.ndarray) -> np.ndarray:
    """Per image, the L2 distance (pixels in [0, 1]) to the nearest subset image of its class."""
    out = np.empty(len(images), np.float32)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        ref = subset[subset_labels == c]
        if not len(ref):
            raise SystemExit(f"the real subset has no image of class {c}: is --real-fraction the set's?")
        out[rows] = nearest_distance(images[rows] / 255.0, ref / 255.0)
    return out


def summarise(name: str, d: np.ndarray, to_anchor: np.ndarray | None = None) -> dict:
    row = {"set": name, "images": len(d), "nearest subset image: median": round(float(np.median(d)), 3),
           "10th percentile": round(float(np.percentile(d, 10)), 3)}
    row["own anchor: median"] = "—" if to_anchor is None else round(float(np.median(to_anchor)), 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", type=Path, help="generated set folders (manifest.parquet + PNGs)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--real-fraction", type=float, default=0.1)
    p.add_argument("--real-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="the reference's draw of real images outside the subset")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    train = load_dataset(args.data, "train", args.data_dir)
    idx = stratified_subset(train.labels, args.real_fraction, args.real_seed)
    subset, subset_labels = train.images[idx], train.labels[idx]
    position = {str(i): k for k, i in enumerate(train.ids)}
    rows, first_counts = [], None
    for folder in args.sets:
        if not (folder / "manifest.parquet").is_file():
            raise SystemExit(f"{folder} holds no manifest.parquet: not a finished generated set")
        manifest = load_manifest(folder)
        images, labels = load_generated_images(folder, manifest), manifest.label.to_numpy()
        if images.shape[1:] != subset.shape[1:]:
            raise SystemExit(f"{folder}: images of shape {images.shape[1:]}, the real subset's are {subset.shape[1:]}")
        first_counts = first_counts or manifest.label.value_counts().to_dict()
        to_anchor = None
        anchors = manifest.get("anchor_id", pd.Series([""] * len(manifest))).fillna("").astype(str)
        if (anchors != "").all():
            missing = sorted(set(anchors) - set(position))
            if missing:
                raise SystemExit(f"{folder}: anchors {missing[:3]} are not {args.data} training images")
            src = train.images[[position[a] for a in anchors]]
            diff = (images.astype(np.float32) - src.astype(np.float32)) / 255.0
            to_anchor = np.sqrt((diff.reshape(len(diff), -1) ** 2).sum(1))
        rows.append(summarise(folder.name, distances(images, labels, subset, subset_labels), to_anchor))

    outside = np.setdiff1d(np.arange(len(train)), idx)
    rng = np.random.default_rng(args.seed)
    per_class = {c: outside[train.labels[outside] == c] for c in sorted(first_counts)}
    pick = np.concatenate([rng.choice(per_class[c], min(n, len(per_class[c])), replace=False)  # all, if fewer
                           for c, n in sorted(first_counts.items())])
    ref = distances(train.images[pick], train.labels[pick], subset, subset_labels)
    rows.append(summarise("real images outside the subset (reference)", ref))
    text = (f"{train.name} train: stratified {args.real_fraction:g} subset (seed {args.real_seed}), {len(idx)} "
            "images; L2 distance over pixels in [0, 1]\n\n" + markdown_table(pd.DataFrame(rows)) + "\n")
    emit_report(text, args.out, "novelty.md")


if __name__ == "__main__":
    main()
