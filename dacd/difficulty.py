"""Out-of-fold difficulty scores and data maps -> one table (pandas / parquet).

Every training image gets `s = 1 - p(true class)` from the fold model that never saw
it (k-fold cross-fitting); in-sample scores of a trained classifier are ~0 and carry
no signal. Training dynamics ("data maps", Swayamdipta et al. 2020) come from the same
fold runs: p(true class) at the end of each epoch in which the image is a *training*
example gives confidence (mean), variability (std) and correctness (fraction right),
averaged over the k-1 runs that train on it. A final classifier trained on all
training images scores the test split (`fold = -1`) and is shipped.

Resumable: each stage (fold 0..k-1, then "final") writes its result atomically into
`work_dir`; a rerun skips finished stages. Every stage's randomness derives from
(seed, stage) alone and batches are fixed by position, so an interrupted and resumed
run gives the same table as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .classifier import Classifier, TrainConfig, build_classifier, image_stats, predict, train_classifier
from .data import ImageDataset

# Data-map regions, thresholds in one place. Variability is the std of p(true class)
# across epochs; confidence its mean.
DATA_MAP_THRESHOLDS = {"ambiguous_min_variability": 0.2, "easy_min_confidence": 0.5}
REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")
NO_REGION = "n/a"  # test images are never training examples
HIST_BINS = 20

SCORE_COLUMNS = [
    "id", "split", "label", "class_name", "s", "p_true", "pred", "pred_name",
    "confidence", "variability", "correctness", "region", "fold", "classifier",
]


@dataclass
class ScoreConfig:
    k: int = 5  # folds
    arch: str = "resnet10t"  # timm name of the scoring classifier
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def train_config(self, stage_seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=stage_seed)


def assign_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold index per image (a function of labels, k and seed only)."""
    if k < 2:
        raise ValueError(f"k must be >= 2 for cross-fitting, got {k}")
    labels = np.asarray(labels)
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, 12345])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    return folds


def assign_region(confidence, variability) -> np.ndarray:
    conf, var = np.asarray(confidence, float), np.asarray(variability, float)
    t = DATA_MAP_THRESHOLDS
    region = np.where(var >= t["ambiguous_min_variability"], "ambiguous",
                      np.where(conf >= t["easy_min_confidence"], "easy-to-learn", "hard-to-learn"))
    return np.where(np.isnan(conf), NO_REGION, region).astype(object)


def _save_npz_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _check_work_dir(work_dir: Path, meta: dict, restart: bool) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    meta_path = work_dir / "run_config.json"
    if restart:
        for f in work_dir.glob("stage_*.npz"):
            f.unlink()
    elif meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta) if old.get(k) != meta.get(k)}
            raise RuntimeError(
                f"{work_dir} holds a scoring run with other settings {diff} (old, new): "
                "pass --restart to discard it, or another --work-dir"
            )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


def run_scoring(train: ImageDataset, test: ImageDataset | None, cfg: ScoreConfig, work_dir: str | Path, *,
                device=None, restart: bool = False, stop_after: int | None = None, progress: bool = True,
                log=print):
    """Run (or resume) cross-fitting. Returns (table, summary, final classifier), or None if
    `stop_after` stages were run in this call before all were done (simulated interruption)."""
    work_dir = Path(work_dir)
    meta = {"config": asdict(cfg), "n_train": len(train), "n_test": 0 if test is None else len(test),
            "train_ids_head": list(map(str, train.ids[:5])), "dataset": train.name}
    _check_work_dir(work_dir, meta, restart)
    folds = assign_folds(train.labels, cfg.k, cfg.seed)
    mean, std = image_stats(train.images[:: max(1, len(train) // 10000)])
    ran = 0

    def new_model(stage_seed: int) -> Classifier:

        torch.manual_seed(stage_seed)
        return build_classifier(cfg.arch, in_chans=train.in_chans, num_classes=train.num_classes,
                                class_names=train.class_names, image_size=train.image_size, mean=mean, std=std)

    for fold in range(cfg.k):
        path = work_dir / f"stage_fold{fold}.npz"
        if path.exists():
            continue
        if stop_after is not None and ran >= stop_after:
            return None
        t0 = time.time()
        tr, ho = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        stage_seed = cfg.seed * 1000 + fold
        model = new_model(stage_seed)
        p_true_epochs, correct_epochs = [], []

        def record(epoch, m, tr=tr):
            p = predict(m, train.images[tr], device=device, desc=f"fold {fold} dynamics", progress=progress)
            y = train.labels[tr]
            p_true_epochs.append(p[np.arange(len(tr)), y].astype(np.float32))
            correct_epochs.append(p.argmax(1) == y)

        train_classifier(model, train.images[tr], train.labels[tr], cfg.train_config(stage_seed), device=device,
                         epoch_end=record, desc=f"fold {fold + 1}/{cfg.k}", progress=progress)
        probs = predict(model, train.images[ho], device=device, desc=f"fold {fold} held-out", progress=progress)
        acc = float((probs.argmax(1) == train.labels[ho]).mean())
        _save_npz_atomic(path, train_idx=tr, heldout_idx=ho, heldout_probs=probs.astype(np.float32),
                         p_true=np.stack(p_true_epochs, 1), correct=np.stack(correct_epochs, 1),
                         seconds=np.float64(time.time() - t0))
        log(f"fold {fold + 1}/{cfg.k}: held-out accuracy {acc:.4f} ({time.time() - t0:.0f} s)")
        ran += 1

    final_dir = work_dir / "final_classifier"
    final_path = work_dir / "stage_final.npz"
    if not final_path.exists():
        if stop_after is not None and ran >= stop_after:
            return None
        t0 = time.time()
        stage_seed = cfg.seed * 1000 + cfg.k
        model = new_model(stage_seed)
        train_classifier(model, train.images, train.labels, cfg.train_config(stage_seed), device=device,
                         desc="final classifier", progress=progress)
        model.save_pretrained(final_dir)
        test_probs = (predict(model, test.images, device=device, desc="test", progress=progress)
                      if test is not None else np.zeros((0, train.num_classes), np.float32))
        _save_npz_atomic(final_path, test_probs=test_probs.astype(np.float32), seconds=np.float64(time.time() - t0))
        if test is not None:
            log(f"final classifier: test accuracy {(test_probs.argmax(1) == test.labels).mean():.4f}")
    final_model = Classifier.from_pretrained(final_dir)
    table, summary = assemble(train, test, cfg, work_dir, folds)
    return table, summary, final_model


def assemble(train: ImageDataset, test: ImageDataset | None, cfg: ScoreConfig, work_dir: Path, folds: np.ndarray):
    """Build the score table and the summary from the finished stages."""
    n, C = len(train), train.num_classes
    probs = np.full((n, C), np.nan, np.float32)
    conf_sum, var_sum, corr_sum, runs = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    fold_acc, seconds = [], {}
    for fold in range(cfg.k):
        z = np.load(work_dir / f"stage_fold{fold}.npz")
        ho, tr = z["heldout_idx"], z["train_idx"]
        probs[ho] = z["heldout_probs"]
        fold_acc.append(float((z["heldout_probs"].argmax(1) == train.labels[ho]).mean()))
        conf_sum[tr] += z["p_true"].mean(1)
        var_sum[tr] += z["p_true"].std(1)
        corr_sum[tr] += z["correct"].mean(1)
        runs[tr] += 1
        seconds[f"fold{fold}"] = float(z["seconds"])
    if np.isnan(probs).any():
        raise RuntimeError(f"{int(np.isnan(probs).any(1).sum())} training images were never held out: the fold "
                           f"results in {work_dir} do not cover the split; rerun with --restart")
    zf = np.load(work_dir / "stage_final.npz")
    seconds["final"] = float(zf["seconds"])
    confidence, variability, correctness = conf_sum / runs, var_sum / runs, corr_sum / runs

    def rows(ds, p, fold, conf, var, corr):
        y = ds.labels
        p_true = p[np.arange(len(y)), y]
        pred = p.argmax(1)
        names = np.array(ds.class_names, dtype=object)
        return pd.DataFrame({
            "id": ds.ids.astype(str), "split": ds.split, "label": y.astype(np.int64),
            "class_name": names[y], "s": np.clip(1.0 - p_true, 0.0, 1.0).astype(np.float32),
            "p_true": p_true.astype(np.float32), "pred": pred.astype(np.int64), "pred_name": names[pred],
            "confidence": conf.astype(np.float32), "variability": var.astype(np.float32),
            "correctness": corr.astype(np.float32), "region": assign_region(conf, var),
            "fold": fold.astype(np.int64), "classifier": cfg.arch,
        })

    parts = [rows(train, probs, folds, confidence, variability, correctness)]
    if test is not None and len(test):
        nan = np.full(len(test), np.nan)
        parts.append(rows(test, zf["test_probs"], np.full(len(test), -1), nan, nan, nan))
    table = pd.concat(parts, ignore_index=True)[SCORE_COLUMNS]
    table["region"] = table["region"].astype(str)
    summary = summarize(table, train.class_names, cfg, fold_acc, seconds)
    return table, summary


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def summarize(table: pd.DataFrame, class_names, cfg: ScoreConfig, fold_acc, seconds) -> dict:
    tr, te = table[table.split == "train"], table[table.split != "train"]
    edges = np.linspace(0, 1, HIST_BINS + 1)
    hist = {c: np.histogram(tr.s[tr.label == i], bins=edges)[0].tolist() for i, c in enumerate(class_names)}
    return {
        "config": asdict(cfg),
        "n_train": int(len(tr)), "n_test": int(len(te)),
        "fold_heldout_accuracy": fold_acc,
        "oof_accuracy": float((tr.pred == tr.label).mean()),
        "test_accuracy": float((te.pred == te.label).mean()) if len(te) else None,
        "class_names": list(class_names),
        "oof_confusion_matrix": confusion_matrix(tr.label, tr.pred, len(class_names)).tolist(),
        "s_histogram_edges": edges.tolist(),
        "s_histogram_per_class": hist,
        "s_share": {"<0.1": float((tr.s < 0.1).mean()), "0.1-0.3": float(((tr.s >= 0.1) & (tr.s < 0.3)).mean()),
                    "0.3-0.7": float(((tr.s >= 0.3) & (tr.s <= 0.7)).mean()), ">0.7": float((tr.s > 0.7).mean())},
        "region_counts": tr.region.value_counts().to_dict(),
        "data_map_thresholds": DATA_MAP_THRESHOLDS,
        "stage_seconds": seconds,
    }


def save_scores(table: pd.DataFrame, summary: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "scores.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "scores.parquet")
    (out_dir / "scores_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def load_scores(path: str | Path) -> pd.DataFrame:
    """Read a score table, checking it is one (clear error otherwise)."""
    path = Path(path)
    if path.is_dir():
        path = path / "scores.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"score table {path} is missing: run `python train/score_difficulty.py` to create it")
    try:
        table = pd.read_parquet(path)
    except Exception as e:
        raise ValueError(f"score table {path} cannot be read ({e}); rerun train/score_difficulty.py") from e
    missing = [c for c in ("id", "label", "s") if c not in table.columns]
    if missing:
        raise ValueError(f"score table {path} lacks columns {missing}; rerun train/score_difficulty.py")
    return table
