"""Measuring generated images honestly: controllability, real-data ceiling, fidelity.

Generated images are measured by an *evaluation* classifier (not the scoring one):
measured `s = 1 − p_eval(requested class)`. Two classifiers never agree perfectly, so
each statistic is also computed on real held-out images binned by their scoring `s`
and measured by the same evaluator (the real-data ceiling).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from .classifier import TrainConfig, build_classifier, image_stats, predict, train_classifier
from .defaults import DIFFICULTY, MEDIUM_BAND
from .sampling import sample

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


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


@torch.no_grad()
def ssim(a, b, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) of each image pair, averaged over its pixels
    and channels: Gaussian window (11, sigma 1.5), K1 = 0.01, K2 = 0.03, valid region only.
    `a`, `b`: (N, C, H, W) arrays or tensors on the same scale (`data_range` wide)."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(a.shape[-2:])} are smaller than the {window}-pixel window")
    n, c = a.shape[:2]
    w = _gaussian_window(window, sigma).expand(c, 1, window, window)
    blur = lambda x: torch.nn.functional.conv2d(x, w, groups=c)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.reshape(n, -1).mean(1).numpy()


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d2 = (x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None] - 2 * x @ y.T
    return np.sqrt(np.maximum(d2, 0))


def _knn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    d = _pairwise(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def manifold_metrics(real, gen, k: int = 5) -> dict:
    """Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al.
    2020) of generated vs real feature sets, with k-nearest-neighbour balls.

    precision: share of generated rows inside some real row's ball (fidelity); recall: share of
    real rows inside some generated row's ball (diversity); density: mean number of real balls
    holding a generated row, over k (about 1 for matching distributions, can exceed 1); coverage:
    share of real rows whose ball holds a generated row."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    if len(real) <= k or len(gen) <= k:
        raise ValueError(f"manifold metrics need more than k={k} rows in each set, got {len(real)} real "
                         f"and {len(gen)} generated")
    r_real, r_gen = _knn_radius(real, k), _knn_radius(gen, k)
    d = _pairwise(real, gen)  # (real, gen)
    inside_real = d <= r_real[:, None]  # generated row j inside real ball i
    return {"precision": float(inside_real.any(0).mean()),
            "recall": float((d <= r_gen[None, :]).any(1).mean()),
            "density": float(inside_real.sum(0).mean() / k),
            "coverage": float(inside_real.any(1).mean()), "k": k}


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
    """L2 distance from each query row to its nearest reference row. In float64: the expanded form
    |q|^2 + |r|^2 - 2 q.r cancels, and in float32 an exact copy could come out about 0.003 from its
    source, depending on the CPU's matrix kernels."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
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

def measure(evaluator, images_uint8_or_float, class_labels, batch_size: int = 512) -> tuple[pd.DataFrame, np.ndarray]:
    """Measured difficulty of images for their requested classes and the predicted class (a
    DataFrame with columns measured_s, pred), and the classifier's features (N, D)."""
    probs, feats = predict(evaluator, images_uint8_or_float, features=True, batch_size=batch_size)
    y = np.asarray(class_labels, int)
    p_true = probs[np.arange(len(y)), y]
    return pd.DataFrame({"measured_s": 1.0 - p_true, "pred": probs.argmax(1)}), feats


def emit_report(text: str, out_dir=None, filename: str = "summary.md") -> None:
    """Print a bench script's report and, when `out_dir` is given, write it there as `filename`."""
    print(text)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / filename).write_text(text)


def markdown_table(table: pd.DataFrame, index: bool = False) -> str:
    """A GitHub table of `table` (numbers to 4 significant digits; NaN as a dash)."""
    t = table.reset_index() if index else table
    cell = lambda v: "—" if isinstance(v, float) and v != v else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(map(str, t.columns)) + " |", "|---" * len(t.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)


def controllability_means(src: dict, title: str = "calibrated") -> str:
    """The dial experiments' table (bench/results/*/means.py): `src` maps a row name "<arm>, <detail>"
    to {judge seed: a folder of `bench/controllability.py --calibrated`}; each row gives Spearman of cell
    means per judge seed and the means over them of Spearman, MAE, medium-band share, accuracy at
    s <= 0.2 and the lowest class's Spearman; below, each arm's (the name before the first comma) mean
    Spearman over its rows. A folder without summary.json is left out (the row names the seeds it has)."""
    def mean(x):
        return sum(x) / len(x)

    lines = [f"| {title} | Spearman (cell means), judge seeds 1, 2, 3 | mean | MAE, mean "
             "| medium-band share, mean | accuracy at s <= 0.2, mean | lowest class Spearman, mean |",
             "|---|---|---|---|---|---|---|"]
    arms, arms_seed1 = {}, {}
    for name, folders in src.items():
        have = {k: json.loads((Path(f) / "summary.json").read_text()) for k, f in sorted(folders.items())
                if (Path(f) / "summary.json").is_file()}
        if not have:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        runs = list(have.values())
        sp = [r["dacd"]["spearman_overall"] for r in runs]
        per_class = {c: mean([r["dacd"]["spearman_per_class"][c] for r in runs])
                     for c in runs[0]["dacd"]["spearman_per_class"]}
        low = min(per_class, key=per_class.get)
        arm = name.split(",")[0]
        arms.setdefault(arm, []).append(mean(sp))
        if 1 in have:
            arms_seed1.setdefault(arm, []).append(have[1]["dacd"]["spearman_overall"])
        seeds = "" if sorted(have) == sorted(folders) else \
            f" (judge seed{'s' if len(have) > 1 else ''} {', '.join(map(str, have))} only)"
        lines.append(f"| {name}{seeds} | {', '.join(f'{x:.3f}' for x in sp)} | {mean(sp):.3f} "
                     f"| {mean([r['dacd']['mae'] for r in runs]):.3f} "
                     f"| {100 * mean([r['medium_band_share']['dacd'] for r in runs]):.1f}% "
                     f"| {100 * mean([r['accuracy_at_s_le_0.2'] for r in runs]):.1f}% | {low} {per_class[low]:.2f} |")
    lines.append("")
    for arm, means in arms.items():
        s1 = arms_seed1.get(arm, [])
        at1 = f"; at judge seed 1 alone {mean(s1):.3f} ({min(s1):.3f}-{max(s1):.3f})" if s1 else ""
        lines.append(f"{arm}: mean Spearman over its {len(means)} training runs {mean(means):.3f} (range "
                     f"{min(means):.3f}-{max(means):.3f}){at1}")
    return "\n".join(lines)


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


def draw_difficulties(n: int, mu: float = DIFFICULTY.mu, sigma: float = DIFFICULTY.sigma, seed: int = 0) -> np.ndarray:
    """s ~ N(mu, sigma) clipped to [0, 1] (the paper's sampling)."""
    return np.clip(np.random.default_rng(seed).normal(mu, sigma, n), 0.0, 1.0)


# ---------------------------------------------------------------- downstream experiments

def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean: (mean, low, high).

    For paired differences (one per seed) this is the paired t-interval; with one value
    the interval is undefined (NaN bounds)."""
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
    reference cell (same seeds) with its confidence interval and two-sided paired-t p-value.

    `runs` has one row per (cell, seed) with columns cell, seed, accuracy. Only seeds
    present in both a cell and the reference enter its difference."""
    ref = runs[runs.cell == reference].set_index("seed").accuracy
    rows = []
    for cell, sub in runs.groupby("cell", sort=False):
        acc = sub.set_index("seed").accuracy
        shared = acc.index.intersection(ref.index)
        diff = (acc.loc[shared] - ref.loc[shared]).to_numpy()
        d_mean, lo, hi = t_interval(diff, confidence) if cell != reference else (0.0, 0.0, 0.0)
        p = float("nan")
        if cell != reference and len(diff) >= 2:
            p = 0.0 if np.std(diff) == 0 and d_mean != 0 else float(stats.ttest_1samp(diff, 0.0).pvalue)
        rows.append({"cell": cell, "seeds": int(len(acc)), "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                     "paired_seeds": int(len(shared)), "diff_mean": d_mean, "diff_ci_low": lo, "diff_ci_high": hi,
                     "significant": bool(lo > 0 or hi < 0) if np.isfinite(lo) and cell != reference else False,
                     "p_value": p})
    return pd.DataFrame(rows)


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone; NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="mergesort")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def per_class_comparison(per_class: pd.DataFrame, reference: str = "real-only",
                         confidence: float = 0.95) -> pd.DataFrame:
    """`paired_comparison` for each class: `per_class` has one row per (cell, seed, class)
    with columns cell, seed, class, accuracy (that class's test accuracy)."""
    parts = []
    for name, sub in per_class.groupby("class", sort=False):
        t = paired_comparison(sub[["cell", "seed", "accuracy"]], reference, confidence)
        parts.append(t.assign(**{"class": name}))
    cols = ["cell", "class", "seeds", "accuracy_mean", "paired_seeds", "diff_mean", "diff_ci_low", "diff_ci_high",
            "significant"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


# ---------------------------------------------------------------- reference arms: real images for a plan

def match_to_plan(pool_s, pool_labels, requested_s, requested_labels) -> np.ndarray:
    """Real images standing in for a generated set: for each requested (class, s), in order,
    the pool index of the not yet used image of that class whose `s` is nearest (without
    replacement; ties go to the lower `s`, then the lower index). Deterministic, and greedy
    in request order, so the first k requests of a class get the same images whatever
    follows them (a smaller ratio takes the first ids, as for generated sets)."""
    pool_s, pool_labels = np.asarray(pool_s, float), np.asarray(pool_labels)
    requested_s, requested_labels = np.asarray(requested_s, float), np.asarray(requested_labels)
    if np.isnan(pool_s).any() or np.isnan(requested_s).any():
        raise ValueError("match_to_plan: difficulty scores must not be NaN")
    out = np.empty(len(requested_s), int)
    for c in np.unique(requested_labels):
        want = np.flatnonzero(requested_labels == c)
        idx = np.flatnonzero(pool_labels == c)
        if len(idx) < len(want):
            raise ValueError(f"class {c}: {len(want)} real images requested, only {len(idx)} in the pool")
        order = idx[np.lexsort((idx, pool_s[idx]))]
        s_sorted = pool_s[order]
        used = np.zeros(len(order), bool)
        for w in want:
            r = requested_s[w]
            pos = int(np.searchsorted(s_sorted, r))
            left, right = pos - 1, pos
            while left >= 0 and used[left]:
                left -= 1
            while right < len(order) and used[right]:
                right += 1
            if right >= len(order) or (left >= 0 and r - s_sorted[left] <= s_sorted[right] - r):
                pick = left
            else:
                pick = right
            used[pick] = True
            out[w] = order[pick]
    return out


def draw_per_class(labels, counts: dict[int, int], seed: int, cycle: bool = False) -> np.ndarray:
    """Indices of `counts[c]` images of each class c, in a seeded order per class (the first k of
    a class are the same whatever the count). With `cycle`, a class with too few images repeats
    its order; otherwise asking for more than a class has is an error."""
    labels = np.asarray(labels)
    out = []
    for c, n in sorted(counts.items()):
        idx = np.flatnonzero(labels == c)
        if n == 0:
            continue
        if not len(idx) or (len(idx) < n and not cycle):
            raise ValueError(f"class {c}: {n} images requested, {len(idx)} available")
        order = np.random.default_rng([seed, int(c)]).permutation(idx)
        out.append(np.resize(order, n))
    return np.concatenate(out) if out else np.zeros(0, int)


def match_report(requested_s, matched_s, labels, class_names) -> pd.DataFrame:
    """How far matched real images are from the plan, per class (and overall)."""
    df = pd.DataFrame({"label": np.asarray(labels, int), "requested": np.asarray(requested_s, float),
                       "matched": np.asarray(matched_s, float)})
    df["gap"] = (df.matched - df.requested).abs()
    rows = []
    for label, sub in list(df.groupby("label")) + [(None, df)]:
        rows.append({"class": "all" if label is None else class_names[int(label)], "n": int(len(sub)),
                     "requested_mean": sub.requested.mean(), "matched_mean": sub.matched.mean(),
                     "gap_mean": sub.gap.mean(), "gap_max": sub.gap.max(),
                     "share_gap_over_0.05": float((sub.gap > 0.05).mean())})
    return pd.DataFrame(rows)


def train_downstream_cell(real_images, real_labels, synth_images, synth_labels, test_images, test_labels, *,
                          arch: str, class_names, steps: int, seed: int, batch_size: int = 128, lr: float = 3e-3,
                          include_real: bool = True, progress: bool = False) -> dict:
    """Train one classifier on real (+ added) images for exactly `steps` optimizer steps and
    return its test accuracy, per-class accuracy and confusion matrix (rows: true class).
    With `include_real=False` it trains on the added images alone (classification accuracy
    score). Normalization always comes from the real images, so every cell sees the same
    preprocessing."""
    t0 = time.time()
    mean, std = image_stats(real_images)
    has_synth = synth_images is not None and len(synth_images) > 0
    if not include_real and not has_synth:
        raise ValueError("a cell without real images needs added images to train on")
    parts_x = ([real_images] if include_real else []) + ([synth_images] if has_synth else [])
    parts_y = ([real_labels] if include_real else []) + ([synth_labels] if has_synth else [])
    x, y = np.concatenate(parts_x), np.concatenate(parts_y)
    torch.manual_seed(seed)  # the classifier's initialisation
    model = build_classifier(arch, in_chans=real_images.shape[1], num_classes=len(class_names),
                             class_names=class_names, image_size=real_images.shape[-1], mean=mean, std=std)
    losses = train_classifier(model, x, y, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                              progress=progress, desc=f"seed {seed}")
    pred = predict(model, test_images).argmax(1)
    truth = np.asarray(test_labels, int)
    confusion = np.zeros((len(class_names), len(class_names)), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    n_real = int(len(real_labels)) if include_real else 0
    return {"accuracy": float((pred == truth).mean()), "final_loss": float(losses[-1]),
            "per_class_accuracy": [float(a) for a in per_class], "confusion": confusion.tolist(),
            "n_real": n_real, "n_synthetic": int(len(y) - n_real), "steps": int(steps),
            "seconds": time.time() - t0}


# ---------------------------------------------------------------- the controllability experiment

def grid_rows(classes, n: int, seed: int = 0) -> pd.DataFrame:
    """The controllability grid: every class x requested bin (S_BINS), n images each; the noise
    seed of an image is a function of (seed, class, position) only."""
    labels = np.repeat(classes, len(S_BINS) * n)
    req = np.tile(np.repeat(S_BINS, n), len(classes))
    seeds = seed * 10**7 + labels * 10**5 + np.tile(np.arange(len(S_BINS) * n), len(classes))
    return pd.DataFrame({"label": labels, "requested_s": req, "seed": seeds})


def medium_rows(classes, n_per_class: int, seed: int = 0) -> pd.DataFrame:
    """n_per_class images per class at s ~ N(0.5, 0.1) (the paper's sampling), seeded."""
    labels = np.repeat(classes, n_per_class)
    s = draw_difficulties(len(labels), DIFFICULTY.mu, DIFFICULTY.sigma, seed=seed + 1)
    return pd.DataFrame({"label": labels, "requested_s": s, "seed": 10**9 + np.arange(len(labels)) + seed * 10**7})


def generate_rows(pipe, rows: pd.DataFrame, settings, *, batch_size: int = 100, progress: bool = False,
                  desc: str = "generating", **sample_kwargs) -> np.ndarray:
    """Float (N, C, H, W) images in [0, 1] of a grid's rows, through the shared sampler
    (`sample_kwargs`, e.g. `sources=` and `strength=` for edits, go to `dacd.sampling.sample`)."""
    bar = tqdm(total=len(rows), desc=desc, disable=not progress)
    res = sample(pipe, rows.label.tolist(), rows.requested_s.tolist(), rows.seed.tolist(), settings,
                 chunk_size=batch_size, progress=lambda f, d: bar.update(round(f * len(rows)) - bar.n),
                 **sample_kwargs)
    bar.close()
    # contiguous, as classifiers have always been fed: a strided view takes other kernels (last-bit differences)
    return np.ascontiguousarray(res.images.transpose(0, 3, 1, 2))


def measured_curve_rows(scorer, images, rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with the scorer's measured s and prediction (what `Calibration.fit` takes)."""
    m, _ = measure(scorer, images, rows.label.to_numpy())
    return rows.assign(measured_s=m.measured_s.to_numpy(), pred=m.pred.to_numpy())


@dataclass
class ControllabilityReport:
    """The controllability experiment's results: per-cell tables, the summary, the grid rows."""

    cells: pd.DataFrame  # generated (source "dacd") and real-ceiling cells
    summary: dict
    grid: pd.DataFrame  # label, requested_s, seed, measured_s, pred (evaluation classifier)
    images: np.ndarray  # the grid's images, float (N, C, H, W)


CELL_COLUMNS = ["source", "label", "class_name", "bin", "n", "measured_mean", "measured_std", "accuracy",
                "abs_error", "real_train_count", "kid"]


def controllability(pipe, evaluator, scores: pd.DataFrame, train, test, settings, *, classes=None, n: int = 20,
                    n_medium: int = 100, seed: int = 0, baseline=None, batch_size: int = 100,
                    progress: bool = False) -> ControllabilityReport:
    """Does the difficulty dial work? A class x requested-s grid measured by the evaluation
    classifier, against the real-data ceiling, with fidelity (KID), confusions at high s,
    nearest-neighbour distances and the medium-band share at s ~ N(0.5, 0.1)."""
    t_start = time.time()
    names = list(pipe.class_names)
    classes = list(range(len(names))) if classes is None else list(classes)
    tr_scores = scores[scores.split == "train"].set_index("id").loc[list(train.ids)].reset_index()
    te_scores = scores[scores.split == "test"].set_index("id").loc[list(test.ids)].reset_index()

    # 1. the grid: every class x requested bin, n images, fixed seeds
    grid = grid_rows(classes, n, seed)
    t0 = time.time()
    imgs = generate_rows(pipe, grid, settings, batch_size=batch_size, progress=progress, desc="grid")
    gen_seconds = time.time() - t0
    m, feats = measure(evaluator, imgs, grid.label)
    grid = grid.assign(measured_s=m.measured_s.to_numpy(), pred=m.pred.to_numpy())
    cells = cell_table(grid, names)

    # 2. real-data ceiling: held-out (test) images binned by scoring s, measured by the evaluator
    rm, _ = measure(evaluator, test.images, test.labels)
    real = pd.DataFrame({"label": test.labels, "requested_s": te_scores.s.to_numpy(), **rm})
    ceil_cells = cell_table(real[real.label.isin(classes)], names)

    # counts of real training images per class and bin: where the model has something to learn from
    tr_bins = S_BINS[bin_of(tr_scores.s)]
    train_counts = pd.Series(1, index=pd.MultiIndex.from_arrays([train.labels, tr_bins])).groupby(level=[0, 1]).sum()
    for c in (cells, ceil_cells):
        c["real_train_count"] = [int(train_counts.get((lab, b), 0)) for lab, b in zip(c.label, c.bin)]

    # 3. fidelity: KID per class and bin against real training images of that class and bin
    _, train_feats = measure(evaluator, train.images, train.labels)
    kids = []
    for r in cells.itertuples():
        real_idx = np.flatnonzero((train.labels == r.label) & (tr_bins == r.bin))[:500]
        gen_idx = np.flatnonzero((grid.label == r.label).to_numpy() & np.isclose(grid.requested_s, r.bin))
        kids.append(kid(train_feats[real_idx], feats[gen_idx]) if len(real_idx) >= 10 else np.nan)
    cells["kid"] = kids
    ceil_cells["kid"] = np.nan
    kid_low = float(np.nanmean(cells[cells.bin <= 0.2].kid))
    kid_high = float(np.nanmean(cells[cells.bin >= 0.7].kid))

    # wrong predictions at high s: do they follow the real confusions?
    hi = grid[grid.requested_s >= 0.7]
    gen_err = error_distribution(hi.label, hi.pred, len(names))
    tr_hi = tr_scores[tr_scores.s > 0.7]
    real_err = error_distribution(tr_hi.label, tr_hi.pred, len(names))
    uniform = np.ones((len(names), len(names))) - np.eye(len(names))
    conf = {"generated_vs_real": confusion_distance(gen_err, real_err),
            "uniform_vs_real": confusion_distance(uniform, real_err),
            "generated_wrong_share_at_high_s": float((hi.pred != hi.label).mean()) if len(hi) else float("nan")}

    # memorisation: pixel distance to the nearest training image of the same class
    labels = grid.label.to_numpy()
    nn_gen, nn_real = [], []
    for c in classes:
        ref = train.as_float(np.flatnonzero(train.labels == c))
        nn_gen.append(nearest_distance(imgs[labels == c], ref))
        nn_real.append(nearest_distance(test.as_float(np.flatnonzero(test.labels == c))[:200], ref))
    nn = {"generated_median": float(np.median(np.concatenate(nn_gen))),
          "real_test_median": float(np.median(np.concatenate(nn_real))),
          "generated_min": float(np.min(np.concatenate(nn_gen)))}

    # 4. medium band at s ~ N(0.5, 0.1): dacd, baseline, real ceiling
    med = medium_rows(classes, n_medium, seed)
    med_imgs = generate_rows(pipe, med, settings, batch_size=batch_size, progress=progress, desc="N(0.5,0.1)")
    medium = {"dacd": medium_share(measure(evaluator, med_imgs, med.label)[0].measured_s)}
    if baseline is not None:
        base_imgs = generate_rows(baseline, med, settings, batch_size=batch_size, progress=progress, desc="baseline")
        medium["baseline"] = medium_share(measure(evaluator, base_imgs, med.label)[0].measured_s)
    te_pos = real_ceiling_sample(te_scores.reset_index(drop=True), med.requested_s.to_numpy(), med.label.to_numpy())
    medium["real_ceiling"] = medium_share(rm.measured_s.to_numpy()[te_pos])
    medium["dacd_over_ceiling"] = medium["dacd"] / medium["real_ceiling"] if medium["real_ceiling"] else float("nan")

    # 5. summary
    low = grid[grid.requested_s <= 0.2]
    summary = {
        "dacd": controllability_summary(cells),
        "dacd_eligible_cells": controllability_summary(cells[cells.real_train_count >= 50]),
        "real_ceiling": controllability_summary(ceil_cells),
        "accuracy_at_s_le_0.2": float((low.pred == low.label).mean()),
        "medium_band_share": medium,
        "medium_band": MEDIUM_BAND,
        "kid_low_s_mean": kid_low, "kid_high_s_mean": kid_high,
        "kid_high_over_low": kid_high / kid_low if kid_low > 0 else float("nan"),
        "confusion_at_high_s": conf,
        "nearest_train_distance": nn,
        "generation_seconds": gen_seconds, "images_generated": int(len(grid)),
        "total_seconds": time.time() - t_start,
    }
    table = pd.concat([cells.assign(source="dacd"), ceil_cells.assign(source="real_ceiling")])[CELL_COLUMNS]
    return ControllabilityReport(table, summary, grid, imgs)
