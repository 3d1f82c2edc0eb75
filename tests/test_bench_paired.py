"""bench/paired.py: the paired difference between two downstream cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_module
from scipy import stats

SCRIPT = Path(__file__).parents[1] / "bench" / "paired.py"


def load():
    return load_module(SCRIPT)


def runs_csv(path, cells: dict) -> str:
    rows = [{"cell": c, "seed": s, "accuracy": a, "other": 1} for c, accs in cells.items() for s, a in accs.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_paired_difference_over_shared_seeds(tmp_path, capsys):
    bp = load()
    a = {0: 0.880, 1: 0.875, 2: 0.884, 3: 0.879, 4: 0.870}
    b = {0: 0.878, 1: 0.876, 2: 0.880, 3: 0.877}  # seed 4 only in A: left out
    path = runs_csv(tmp_path / "runs.csv", {"A": a, "B": b, "real-only": {0: 0.87, 1: 0.87}})
    r = bp.compare(bp.load_runs([path]), "A", "B")
    d = np.array([a[s] - b[s] for s in range(4)]) * 100
    assert r["paired_seeds"] == 4 and r["diff"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (r["low"], r["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert bp.main([path, "A", "B"]) == 0
    assert f"{d.mean():+.2f} points" in capsys.readouterr().out
    swapped = bp.compare(bp.load_runs([path]), "B", "A")
    assert swapped["diff"] == pytest.approx(-r["diff"])


def test_cells_from_two_tables_and_refusals(tmp_path):
    bp = load()
    one = runs_csv(tmp_path / "one.csv", {"A": {0: 0.88, 1: 0.87}, "real-only": {0: 0.86, 1: 0.86}})
    two = runs_csv(tmp_path / "two.csv", {"B": {0: 0.87, 1: 0.88}, "real-only": {0: 0.86, 1: 0.86}})
    assert bp.compare(bp.load_runs([one, two]), "A", "B")["paired_seeds"] == 2
    bad = runs_csv(tmp_path / "bad.csv", {"A": {0: 0.80, 1: 0.87}})
    with pytest.raises(SystemExit, match="different accuracies"):
        bp.load_runs([one, bad])
    with pytest.raises(SystemExit, match="no cell 'C'"):
        bp.compare(bp.load_runs([one]), "A", "C")
    lone = runs_csv(tmp_path / "lone.csv", {"A": {0: 0.88}, "B": {1: 0.87}})
    with pytest.raises(SystemExit, match="share 0 seed"):
        bp.compare(bp.load_runs([lone]), "A", "B")


def test_cells_of_one_name_from_two_tables_are_named_by_their_table(tmp_path, capsys):
    """RUNS.CSV::CELL reads a cell from its table alone, where two tables hold cells of one name."""
    bp = load()
    big = runs_csv(tmp_path / "big.csv", {"A": {0: 0.89, 1: 0.88, 2: 0.90}})
    small = runs_csv(tmp_path / "small.csv", {"A": {0: 0.87, 1: 0.87, 2: 0.86}})
    with pytest.raises(SystemExit, match="different accuracies"):
        bp.load_runs([big, small])
    a, b = f"{big}::A", f"{small}::A"
    r = bp.compare(bp.cells_named([big, small], [a, b]), a, b)
    assert r["paired_seeds"] == 3 and r["diff"] == pytest.approx(100 * (0.89 + 0.88 + 0.90 - 0.87 - 0.87 - 0.86) / 3)
    assert bp.main([f"{big},{small}", a, b]) == 0 and "+2.33 points" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no cell 'B' in"):
        bp.cells_named([big], [f"{big}::B", a])
    with pytest.raises(SystemExit, match="--confusion"):
        bp.main([f"{big},{small}", a, b, "--confusion", "3"])


def test_confusion_changes_in_points_of_the_true_class(tmp_path, capsys):
    import json

    bp = load()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    names = ["a", "b", "c"]
    ref = [[90, 10, 0], [5, 45, 0], [0, 0, 200]]  # rows true (100, 50 and 200 test images), columns predicted
    new = [[80, 20, 0], [5, 44, 1], [0, 0, 200]]
    (one / "confusion.json").write_text(json.dumps({"class_names": names, "rows_true_columns_predicted": {"A": new}}))
    (two / "confusion.json").write_text(json.dumps({"class_names": names,
                                                    "rows_true_columns_predicted": {"B": ref, "A": ref}}))
    p1 = runs_csv(one / "runs.csv", {"A": {0: 0.8, 1: 0.81}})
    p2 = runs_csv(two / "runs.csv", {"B": {0: 0.8, 1: 0.8}})
    names, mats, seeds = bp.load_confusions([p1, p2])  # A from the first file that has it
    got = bp.confusion_changes(names, mats, "A", "B", 3)
    assert seeds == {"A": {0, 1}, "B": {0, 1}}
    assert list(got.points) == pytest.approx([-10.0, 10.0, -2.0])
    assert list(zip(got.true, got.predicted, got.kind)) == [("a", "a", "correct"), ("a", "b", "mistake"),
                                                            ("b", "b", "correct")]
    assert bp.main([f"{p1},{p2}", "A", "B", "--confusion", "2"]) == 0
    out = capsys.readouterr().out
    assert "largest changes" in out and "not paired" not in out
    runs_csv(two / "runs.csv", {"B": {0: 0.8, 1: 0.8, 2: 0.8}})  # B's matrix is a mean over a third seed too
    assert bp.main([f"{p1},{p2}", "A", "B", "--confusion", "2"]) == 0
    assert "not paired" in capsys.readouterr().out
    (two / "confusion.json").write_text(json.dumps({"class_names": ["x", "y", "z"], "rows_true_columns_predicted": {}}))
    with pytest.raises(SystemExit, match="other classes"):
        bp.load_confusions([p1, p2])
    with pytest.raises(SystemExit, match="no confusion.json"):
        bp.load_confusions([str(tmp_path / "runs.csv")])
