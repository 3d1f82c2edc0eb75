import json

import numpy as np
import pandas as pd
import pytest

from dacd.data import load_fashion_mnist
from dacd.difficulty import (
    NO_REGION,
    REGIONS,
    SCORE_COLUMNS,
    ScoreConfig,
    assign_folds,
    assign_region,
    load_scores,
    run_scoring,
)

TINY = ScoreConfig(k=3, epochs=2, batch_size=32, seed=7)


def test_folds_are_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 23)
    f = assign_folds(labels, 5, seed=1)
    assert np.array_equal(f, assign_folds(labels, 5, seed=1))
    for c in range(10):
        counts = np.bincount(f[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_regions_thresholds():
    r = assign_region([0.95, 0.5, 0.1, np.nan], [0.02, 0.3, 0.05, np.nan])
    assert list(r) == ["easy-to-learn", "ambiguous", "hard-to-learn", NO_REGION]


def test_scoring_table_fold_disjointness_and_schema(fake_fmnist, tmp_path):
    train, test = load_fashion_mnist("train", fake_fmnist), load_fashion_mnist("test", fake_fmnist)
    table, summary, model = run_scoring(train, test, TINY, tmp_path / "w", progress=False, log=lambda *a: None)
    assert list(table.columns) == SCORE_COLUMNS
    tr = table[table.split == "train"]
    assert len(tr) == len(train) and tr.id.is_unique and set(tr.id) == set(train.ids)
    assert table.s.between(0, 1).all() and np.allclose(table.s, 1 - table.p_true, atol=1e-6)
    # every training image was held out exactly once, by a model that never trained on it
    seen = np.zeros(len(train), int)
    for fold in range(TINY.k):
        z = np.load(tmp_path / "w" / f"stage_fold{fold}.npz")
        assert not set(z["train_idx"]) & set(z["heldout_idx"])
        assert len(z["train_idx"]) + len(z["heldout_idx"]) == len(train)
        seen[z["heldout_idx"]] += 1
        assert (tr.fold.to_numpy()[z["heldout_idx"]] == fold).all()
        assert z["p_true"].shape == (len(z["train_idx"]), TINY.epochs)
    assert (seen == 1).all()
    assert set(tr.region) <= set(REGIONS)
    assert tr.confidence.between(0, 1).all() and (tr.variability >= 0).all()
    te = table[table.split == "test"]
    assert len(te) == len(test) and (te.fold == -1).all() and te.confidence.isna().all()
    assert summary["oof_accuracy"] == pytest.approx((tr.pred == tr.label).mean())
    assert np.array(summary["oof_confusion_matrix"]).sum() == len(train)
    assert len(summary["fold_heldout_accuracy"]) == TINY.k
    assert sum(summary["s_histogram_per_class"]["Trouser"]) == (tr.label == 1).sum()
    json.dumps(summary)  # serializable
    assert model.config.num_classes == 10


def test_kill_and_resume_equals_uninterrupted(fake_fmnist, tmp_path):
    train, test = load_fashion_mnist("train", fake_fmnist), load_fashion_mnist("test", fake_fmnist)
    quiet = dict(progress=False, log=lambda *a: None)
    full, _, _ = run_scoring(train, test, TINY, tmp_path / "a", **quiet)
    assert run_scoring(train, test, TINY, tmp_path / "b", stop_after=1, **quiet) is None  # "killed" after fold 0
    assert sorted(p.name for p in (tmp_path / "b").glob("stage_*")) == ["stage_fold0.npz"]
    assert run_scoring(train, test, TINY, tmp_path / "b", stop_after=1, **quiet) is None  # again, after fold 1
    resumed, _, _ = run_scoring(train, test, TINY, tmp_path / "b", **quiet)
    pd.testing.assert_frame_equal(full, resumed)


def test_changed_settings_refuse_to_mix(fake_fmnist, tmp_path):
    train = load_fashion_mnist("train", fake_fmnist)
    assert run_scoring(train, None, TINY, tmp_path / "w", stop_after=1, progress=False, log=lambda *a: None) is None
    other = ScoreConfig(k=3, epochs=1, batch_size=32, seed=7)
    with pytest.raises(RuntimeError, match="--restart"):
        run_scoring(train, None, other, tmp_path / "w", progress=False)


@pytest.mark.slow
def test_cli_writes_shippable_outputs(tiny_scores):
    table = load_scores(tiny_scores / "scores.parquet")
    assert list(table.columns) == SCORE_COLUMNS
    summary = json.loads((tiny_scores / "scores_summary.json").read_text())
    assert summary["config"]["k"] == 2
    from dacd.classifier import Classifier

    assert Classifier.from_pretrained(tiny_scores / "classifier").config.num_classes == 10


def test_missing_score_table_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="score_difficulty.py"):
        load_scores(tmp_path / "nope.parquet")
