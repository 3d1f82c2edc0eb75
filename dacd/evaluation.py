"""Measuring generated images honestly: controllability, real-data ceiling, fidelity.

Generated images are measured by an *evaluation* classifier (not the scoring one):
measured `s = 1 − p_eval(requested class)`. Two classifiers never agree perfectly, so
each statistic is also computed on real held-out images binned by their scoring `s`
and measured by the same evaluator (the real-data ceiling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MEDIUM_BAND = (0.3, 0.7)
S_BINS = np.round(np.arange(0.05, 1.0, 0.1), 2)  # requested s: bin centres 0.05 ... 0.95
BIN_HALF_WIDTH = 0.05


# ---------------------------------------------------------------- statistics

def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(1, len(x) + 1)
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            ranks[order[i:j + 1]] = (i + j + 2) / 2
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (NaN when either side is constant or too short)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def kid(real: np.ndarray, gen: np.ndarray) -> float:
    """Kernel Inception Distance (unbiased MMD² with the cubic polynomial kernel
    k(x, y) = (x·y / d + 1)³) between two feature sets; needs >= 2 rows each."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    m, n = len(real), len(gen)
    if m < 2 or n < 2:
        return float("nan")
    d = real.shape[1]
    k_rr = (real @ real.T / d + 1) ** 3
    k_gg = (gen @ gen.T / d + 1) ** 3
    k_rg = (real @ gen.T / d + 1) ** 3
    return float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) + (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
                 - 2 * k_rg.mean())


def error_distribution(labels, preds, num_classes: int) -> np.ndarray:
    """Off-diagonal confusion mass, normalised to sum to 1 (zeros if no errors)."""
    m = np.zeros((num_classes, num_classes))
    np.add.at(m, (np.asarray(labels, int), np.asarray(preds, int)), 1)
    np.fill_diagonal(m, 0)
    total = m.sum()
    return m / total if total else m


def confusion_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two error distributions: 0 = same confusion
    pattern, 1 = disjoint. NaN if either has no errors."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.sum() == 0 or b.sum() == 0:
        return float("nan")
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def nearest_distance(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> np.ndarray:
    """L2 distance from each query row to its nearest reference row."""
    q = np.asarray(queries, np.float32).reshape(len(queries), -1)
    r = np.asarray(references, np.float32).reshape(len(references), -1)
    r2 = (r ** 2).sum(1)
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), chunk):
        block = q[i:i + chunk]
        d2 = (block ** 2).sum(1)[:, None] + r2[None] - 2 * block @ r.T
        out[i:i + chunk] = np.sqrt(np.maximum(d2.min(1), 0))
    return out


def medium_share(s, band=MEDIUM_BAND) -> float:
    s = np.asarray(s, float)
    return float(((s >= band[0]) & (s <= band[1])).mean()) if len(s) else float("nan")


def bin_of(s, centres=S_BINS, half=BIN_HALF_WIDTH) -> np.ndarray:
    """Index of the requested-s bin each value falls in (nearest centre)."""
    s = np.asarray(s, float)
    return np.clip(np.rint((s - centres[0]) / (2 * half)).astype(int), 0, len(centres) - 1)


# ---------------------------------------------------------------- tables

def measure(evaluator, images_uint8_or_float, class_labels, batch_size: int = 512) -> pd.DataFrame:
    """Measured difficulty of images for their requested classes, the predicted class and features."""
    from .classifier import predict

    probs, feats = predict(evaluator, images_uint8_or_float, features=True, batch_size=batch_size)
    y = np.asarray(class_labels, int)
    p_true = probs[np.arange(len(y)), y]
    return pd.DataFrame({"measured_s": 1.0 - p_true, "pred": probs.argmax(1)}), feats


def cell_table(df: pd.DataFrame, class_names) -> pd.DataFrame:
    """Per (class, requested bin): n, mean/std of measured s, accuracy. `df` has columns
    label, requested_s, measured_s, pred."""
    g = df.assign(bin=S_BINS[bin_of(df.requested_s)]).groupby(["label", "bin"])
    cells = g.agg(n=("measured_s", "size"), measured_mean=("measured_s", "mean"),
                  measured_std=("measured_s", "std"),
                  accuracy=("pred", lambda p: float((p == df.loc[p.index, "label"]).mean()))).reset_index()
    cells.insert(1, "class_name", [class_names[i] for i in cells.label])
    cells["abs_error"] = (cells.measured_mean - cells.bin).abs()
    return cells


def controllability_summary(cells: pd.DataFrame, min_n: int = 1) -> dict:
    """Spearman(requested bin, cell mean) per class and overall; MAE; monotonic classes."""
    c = cells[cells.n >= min_n]
    per_class = {name: spearman(sub.bin, sub.measured_mean) for name, sub in c.groupby("class_name")}
    rises = {name: bool(np.all(np.diff(sub.sort_values("bin").measured_mean) >= -0.02))
             for name, sub in c.groupby("class_name")}
    return {"spearman_overall": spearman(c.bin, c.measured_mean), "spearman_per_class": per_class,
            "mae": float(c.abs_error.mean()) if len(c) else float("nan"), "rises_per_class": rises}


def real_ceiling_sample(scores: pd.DataFrame, requested: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each (class, requested s), the index (into `scores`) of the real image of that
    class whose scoring-classifier s is closest: real images standing in for generated ones."""
    out = np.empty(len(requested), int)
    for c in np.unique(labels):
        sub = scores[scores.label == c]
        order = np.argsort(sub.s.to_numpy())
        s_sorted = sub.s.to_numpy()[order]
        mask = labels == c
        pos = np.clip(np.searchsorted(s_sorted, requested[mask]), 0, len(s_sorted) - 1)
        left = np.clip(pos - 1, 0, len(s_sorted) - 1)
        pick = np.where(np.abs(s_sorted[left] - requested[mask]) < np.abs(s_sorted[pos] - requested[mask]), left, pos)
        out[mask] = sub.index.to_numpy()[order[pick]]
    return out


def draw_difficulties(n: int, mu: float = 0.5, sigma: float = 0.1, seed: int = 0) -> np.ndarray:
    """s ~ N(mu, sigma) clipped to [0, 1] (the paper's sampling)."""
    return np.clip(np.random.default_rng(seed).normal(mu, sigma, n), 0.0, 1.0)


# ---------------------------------------------------------------- downstream experiments

def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean: (mean, low, high).

    For paired differences (one per seed) this is the paired t-interval; with one value
    the interval is undefined (NaN bounds)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def paired_comparison(runs: pd.DataFrame, reference: str = "real-only", confidence: float = 0.95) -> pd.DataFrame:
    """Per cell: test accuracy mean ± std over seeds, and the paired difference to the
    reference cell (same seeds) with its confidence interval.

    `runs` has one row per (cell, seed) with columns cell, seed, accuracy. Only seeds
    present in both a cell and the reference enter its difference."""
    ref = runs[runs.cell == reference].set_index("seed").accuracy
    rows = []
    for cell, sub in runs.groupby("cell", sort=False):
        acc = sub.set_index("seed").accuracy
        shared = acc.index.intersection(ref.index)
        diff = (acc.loc[shared] - ref.loc[shared]).to_numpy()
        d_mean, lo, hi = t_interval(diff, confidence) if cell != reference else (0.0, 0.0, 0.0)
        rows.append({"cell": cell, "seeds": int(len(acc)), "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                     "paired_seeds": int(len(shared)), "diff_mean": d_mean, "diff_ci_low": lo, "diff_ci_high": hi,
                     "significant": bool(lo > 0 or hi < 0) if np.isfinite(lo) and cell != reference else False})
    return pd.DataFrame(rows)


def train_downstream_cell(real_images, real_labels, synth_images, synth_labels, test_images, test_labels, *,
                          arch: str, class_names, steps: int, seed: int, batch_size: int = 128, lr: float = 3e-3,
                          progress: bool = False) -> dict:
    """Train one classifier on real (+ synthetic) images for exactly `steps` optimizer steps
    and return its test accuracy. Normalization comes from the real images alone, so every
    cell sees the same preprocessing."""
    import time

    import torch

    from .classifier import TrainConfig, build_classifier, image_stats, predict, train_classifier

    t0 = time.time()
    mean, std = image_stats(real_images)
    x = real_images if synth_images is None or not len(synth_images) else np.concatenate([real_images, synth_images])
    y = real_labels if synth_labels is None or not len(synth_labels) else np.concatenate([real_labels, synth_labels])
    torch.manual_seed(seed)  # the classifier's initialisation
    model = build_classifier(arch, in_chans=real_images.shape[1], num_classes=len(class_names),
                             class_names=class_names, image_size=real_images.shape[-1], mean=mean, std=std)
    losses = train_classifier(model, x, y, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                              progress=progress, desc=f"seed {seed}")
    probs = predict(model, test_images)
    return {"accuracy": float((probs.argmax(1) == np.asarray(test_labels)).mean()), "final_loss": float(losses[-1]),
            "n_real": int(len(real_labels)), "n_synthetic": int(len(y) - len(real_labels)), "steps": int(steps),
            "seconds": time.time() - t0}
