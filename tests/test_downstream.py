"""Downstream experiments: paired statistics on constructed data, the harness end to end on tiny data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from dacd.classifier import TrainConfig, build_classifier, train_classifier
from dacd.evaluation import paired_comparison, t_interval


def test_t_interval_known_answers():
    # mean 2, sample sd 1, n=4: half width = t_{0.975,3} * 1 / 2 = 3.182446 / 2
    m, lo, hi = t_interval([1, 2, 3, 2])
    sd = np.std([1, 2, 3, 2], ddof=1)
    assert m == pytest.approx(2.0)
    assert hi - m == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert m - lo == pytest.approx(hi - m)
    assert np.isnan(t_interval([1.0])[1]) and np.isnan(t_interval([])[0])
    assert t_interval([1, 1, 1]) == (1.0, 1.0, 1.0)


def test_paired_comparison_uses_the_pairing():
    rng = np.random.default_rng(0)
    seeds = np.arange(6)
    base = 0.80 + rng.normal(0, 0.02, 6)  # large seed-to-seed spread ...
    rows = [("real-only", s, a) for s, a in zip(seeds, base)]
    rows += [("plus", s, a + 0.003 + d) for s, a, d in zip(seeds, base, rng.normal(0, 0.0005, 6))]  # ... small paired gain
    rows += [("same", s, a) for s, a in zip(seeds, base)]
    rows += [("partial", s, a + 0.01) for s, a in zip(seeds[:3], base[:3])]
    t = paired_comparison(pd.DataFrame(rows, columns=["cell", "seed", "accuracy"])).set_index("cell")
    assert t.loc["plus", "diff_mean"] == pytest.approx(0.003, abs=0.0006)
    assert t.loc["plus", "significant"]  # the pairing removes the seed spread
    unpaired_sd = np.sqrt(2) * np.std(base, ddof=1)
    assert t.loc["plus", "diff_ci_high"] - t.loc["plus", "diff_ci_low"] < unpaired_sd / 5
    assert t.loc["same", "diff_mean"] == 0 and not t.loc["same", "significant"]
    assert t.loc["partial", "paired_seeds"] == 3 and t.loc["partial", "diff_mean"] == pytest.approx(0.01)
    assert t.loc["real-only", "accuracy_std"] == pytest.approx(np.std(base, ddof=1))


def test_classifier_trains_an_exact_number_of_steps():
    from conftest import make_images

    labels = np.arange(50) % 10
    x = make_images(labels, 0, size=32)[:, None]
    model = build_classifier("resnet10t", in_chans=1, num_classes=10)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    train_classifier(model, x, labels, TrainConfig(steps=7, batch_size=16), progress=False)  # 4 steps per epoch
    assert len(calls) == 7


RESULT_COLUMNS = ["cell", "model", "mu", "ratio", "seeds", "accuracy_mean", "accuracy_std", "paired_seeds",
                  "diff_mean", "diff_ci_low", "diff_ci_high", "significant", "n_real", "n_synthetic",
                  "measured_medium_share"]


def test_downstream_quick_end_to_end(tiny_dacd, tiny_baseline, tiny_evaluator, fake_fmnist, tmp_path):
    args = ["train/downstream.py", "--data-dir", fake_fmnist, "--model", tiny_dacd, "--baseline", tiny_baseline,
            "--evaluator", tiny_evaluator, "--real-fraction", "0.2", "--mus", "0.5", "0.9", "--ratios", "0.1", "0.25",
            "--seeds", "0", "1", "--steps", "3", "--batch-size", "16", "--gen-steps", "2", "--gen-batch-size", "8",
            "--work-dir", tmp_path / "work", "--out", tmp_path / "out", "--no-progress"]
    first = run_script(*args)
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table.columns) == RESULT_COLUMNS
    assert list(table.cell) == ["real-only", "dacd mu=0.5 r=0.1", "dacd mu=0.9 r=0.1", "baseline r=0.1",
                                "dacd mu=0.5 r=0.25", "dacd mu=0.9 r=0.25", "baseline r=0.25"]
    t = table.set_index("cell")
    assert t.loc["real-only", "n_real"] == 60 and t.loc["real-only", "n_synthetic"] == 0
    assert t.loc["dacd mu=0.5 r=0.1", "n_synthetic"] == 10 and t.loc["dacd mu=0.5 r=0.25", "n_synthetic"] == 20
    assert (t.seeds == 2).all() and t.accuracy_mean.between(0, 1).all()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 14 and (runs.steps == 3).all()
    sets = pd.read_csv(tmp_path / "out" / "sets.csv")
    assert set(sets["set"]) == {"dacd-mu0.5", "dacd-mu0.9", "baseline"} and (sets.images == 20).all()  # 6 real per class x 0.25, half up
    assert (tmp_path / "out" / "downstream.html").stat().st_size > 10_000
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.count("\n| ") == 8 and "| baseline r=0.25 |" in md  # header + 7 cells
    # the 10% set is the first ids of the 25% set: one generation per set
    m = pd.read_parquet(tmp_path / "work" / "synthetic" / "dacd-mu0.9" / "manifest.parquet")
    assert abs(m.requested_s.mean() - 0.9) < 0.1
    assert (m.real_subset == "fashion-mnist/train: stratified 0.2 (seed 0)").all()
    # cached: a rerun trains nothing and prints the same table
    again = run_script(*args)
    assert "accuracy" in again.stdout and "seed 0: accuracy" not in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "results.csv"), table)
    assert "seed 0: accuracy" in first.stdout
