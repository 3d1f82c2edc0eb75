import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, copy_dacd, load_module, run_script

from dacd.calibration import Calibration
from dacd.evaluation import (
    S_BINS,
    bin_of,
    confusion_distance,
    draw_difficulties,
    error_distribution,
    kid,
    medium_share,
    nearest_distance,
    real_ceiling_sample,
    spearman,
)


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # any monotone map
    # textbook example with a tie: x=(1,2,3,4,5), y=(2,1,4,3,3) -> ranks y=(2,1,4.5,3.5,3.5)... check vs formula
    x, y = np.array([1, 2, 3, 4, 5.0]), np.array([5, 6, 7, 8, 7.0])
    ry = np.array([1, 2, 3.5, 5, 3.5])
    assert spearman(x, y) == pytest.approx(np.corrcoef(np.arange(1, 6), ry)[0, 1])
    assert np.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_kid_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert abs(kid(a, b)) < 0.05
    assert kid(a, b + 1.0) > 10 * abs(kid(a, b))
    # hand-computed case: d=1, real={0, 0}, gen={1, 1}: k_rr=1, k_gg=8, k_rg=1 -> 1 + 8 - 2 = 7
    assert kid(np.zeros((2, 1)), np.ones((2, 1))) == pytest.approx(7.0)


def test_confusion_distance():
    a = error_distribution([0, 0, 1], [1, 1, 0], 3)  # errors 0->1 (2/3), 1->0 (1/3)
    assert a[0, 1] == pytest.approx(2 / 3) and a[1, 0] == pytest.approx(1 / 3)
    assert confusion_distance(a, a) == 0
    b = error_distribution([2], [0], 3)  # disjoint pattern
    assert confusion_distance(a, b) == pytest.approx(1.0)
    c = error_distribution([0, 1], [1, 0], 3)  # half/half
    assert confusion_distance(a, c) == pytest.approx(1 / 6)
    assert np.isnan(confusion_distance(a, np.zeros((3, 3))))


def test_nearest_distance_and_bins_and_share():
    refs = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(nearest_distance(np.array([[3.0, 4.0], [0.0, 1.0]]), refs), [0.0, 1.0])
    assert list(S_BINS[bin_of([0.0, 0.05, 0.14, 0.16, 0.96, 1.0])]) == [0.05, 0.05, 0.15, 0.15, 0.95, 0.95]
    assert medium_share([0.1, 0.3, 0.5, 0.7, 0.9]) == pytest.approx(0.6)


def test_difficulty_draws_follow_the_asked_distribution():
    s = draw_difficulties(20000, 0.5, 0.1, seed=3)
    assert abs(s.mean() - 0.5) < 0.005 and abs(s.std() - 0.1) < 0.005
    assert medium_share(s) == pytest.approx(0.9545, abs=0.01)  # P(|z| <= 2)
    assert (draw_difficulties(1000, 0.95, 0.2, seed=0) <= 1).all()


def test_real_ceiling_sample_picks_nearest_same_class():
    scores = pd.DataFrame({"label": [0, 0, 0, 1, 1], "s": [0.1, 0.5, 0.9, 0.2, 0.6]})
    idx = real_ceiling_sample(scores, np.array([0.45, 0.95, 0.5]), np.array([0, 0, 1]))
    assert list(idx) == [1, 2, 4]


def test_calibration_inverts_a_monotone_curve(tmp_path):
    cal = Calibration([0.0, 0.5, 1.0], {"0": [0.1, 0.2, 0.6], "1": [0.3, 0.25, 0.5]})
    assert cal.invert(0, 0.2) == pytest.approx(0.5)
    assert cal.invert(0, 0.4) == pytest.approx(0.75)
    assert cal.invert(0, 0.0) == pytest.approx(0.0) and cal.invert(0, 0.9) == pytest.approx(1.0)
    assert cal.invert(1, 0.3) == pytest.approx(0.0)  # non-monotone dip flattened by the running max
    assert cal.forward(0, cal.invert(0, 0.33)) == pytest.approx(0.33)
    cal.save(tmp_path)
    assert Calibration.load(tmp_path).measured == cal.measured
    (tmp_path / "calibration.json").write_text("{broken")
    with pytest.raises(ValueError, match="controllability"):
        Calibration.load(tmp_path)


def test_calibration_names_the_classes_whose_dial_is_flat(capsys):
    # class 0 moves from 0.05 to 0.9; class 1 stays near 0.9 (a weak run's Trouser); class 2 dips, then rises
    cal = Calibration([0.1, 0.5, 0.9], {"0": [0.05, 0.4, 0.9], "1": [0.88, 0.9, 0.95], "2": [0.3, 0.1, 0.45]})
    assert cal.reach(0) == pytest.approx((0.05, 0.9))
    assert cal.reach(2) == pytest.approx((0.3, 0.45))  # the running max: the dip does not count as reach
    assert cal.flat_classes() == {1: pytest.approx((0.88, 0.95)), 2: pytest.approx((0.3, 0.45))}
    assert cal.flat_classes(min_span=0.1) == {1: pytest.approx((0.88, 0.95))}
    calibrate = load_module(ROOT / "train" / "calibrate.py")
    calibrate.report_reach(cal, ["Shirt", "Trouser", "Bag"])
    out = capsys.readouterr().out
    assert "Shirt 0.05-0.90, Trouser 0.88-0.95, Bag 0.30-0.45" in out
    assert "barely moves Trouser, Bag" in out and "Shirt" not in out.split("barely moves")[1]
    assert "another --seed" in out
    calibrate.report_reach(Calibration([0.1, 0.9], {"0": [0.0, 0.8]}), ["Shirt"])
    assert "warning" not in capsys.readouterr().out
    assert list(Calibration([0.1, 0.9], {"0": [0.0, float("nan")]}).flat_classes()) == [0]  # NaN: not a dial
    calibrate.report_reach(Calibration([0.1, 0.9], {"0": [0.1, 0.2]}, {"img2img_strength": 0.5}), ["Shirt"])
    out = capsys.readouterr().out
    assert "calibrated edits of this class" in out and "--img2img-strength" in out and "--seed" not in out


def test_isotonic_calibration_fits_least_squares_and_inverts_between_run_centres():
    raw = [0.1, 0.5, 0.3, 0.6, 0.9]  # one violator: 0.5 then 0.3
    cal = Calibration([0.0, 0.25, 0.5, 0.75, 1.0], {"0": raw}, meta={"monotone": "isotonic"})
    x, y = cal.curve(0)
    assert list(x) == pytest.approx([0.0, 0.375, 0.75, 1.0])  # the pooled run (0.25, 0.5) is one knot at its centre
    assert list(y) == pytest.approx([0.1, 0.4, 0.6, 0.9])
    assert cal.invert(0, 0.4) == pytest.approx(0.375) and cal.forward(0, 0.375) == pytest.approx(0.4)
    # the running max flattens the dip to 0.5 and interpolates from the grid's first two points instead
    assert Calibration(cal.requested, cal.measured).invert(0, 0.4) == pytest.approx(0.1875)
    assert Calibration(cal.requested, cal.measured).monotone == "running-max"  # curves that name no rule
    with pytest.raises(ValueError, match="monotone rule"):
        Calibration(cal.requested, cal.measured, meta={"monotone": "spline"}).curve(0)
    for says_nothing in ([0.3] * 5, [0.9, 0.7, 0.5, 0.3, 0.1]):  # flat, or falling: one pooled run
        flat = Calibration(cal.requested, {"0": says_nothing}, meta={"monotone": "isotonic"})
        assert [flat.invert(0, t) for t in (0.2, 0.8, 1.5)] == pytest.approx([0.2, 0.8, 1.0])  # the request, clipped


def test_pooled_calibration_weights_curves_by_images_per_cell(tmp_path):
    meta = {"measured_by": "classifier", "steps": 15, "guidance_scale": 5.0}
    a = Calibration([0.0, 1.0], {"0": [0.0, 0.6]}, {**meta, "n_per_cell": 20, "seed": 0})
    b = Calibration([0.0, 1.0], {"0": [0.3, 0.9]}, {**meta, "n_per_cell": 10, "seed": 2})
    pooled = Calibration.pool([a, b], monotone="isotonic")
    assert pooled.measured["0"] == pytest.approx([0.1, 0.7])
    assert pooled.meta["n_per_cell"] == 30 and pooled.meta["seed"] == [0, 2] and pooled.monotone == "isotonic"
    again = Calibration.pool([pooled, Calibration([0.0, 1.0], {"0": [0.1, 0.7]}, {**meta, "n_per_cell": 30, "seed": 3})])
    assert again.meta["seed"] == [0, 2, 3] and again.meta["n_per_cell"] == 60 and again.monotone == "isotonic"
    unweighted = Calibration([0.0, 1.0], {"0": [0.3, 0.9]}, meta)
    with pytest.raises(ValueError, match="n_per_cell"):
        Calibration.pool([a, unweighted])
    with pytest.raises(ValueError, match="positive"):
        Calibration.pool([a, Calibration([0.0, 1.0], {"0": [0.3, 0.9]}, {**meta, "n_per_cell": 0})])
    with pytest.raises(ValueError, match="guidance_scale"):
        Calibration.pool([a, Calibration([0.0, 1.0], {"0": [0.0, 0.6]}, {**meta, "guidance_scale": 2.0})])
    with pytest.raises(ValueError, match="grid"):
        Calibration.pool([a, Calibration([0.0, 0.5], {"0": [0.0, 0.6]}, meta)])
    (tmp_path / "a").mkdir()
    a.save(tmp_path / "a")
    b.save(tmp_path)
    calibrate = load_module(ROOT / "train" / "calibrate.py")  # in-process: --merge generates nothing
    assert calibrate.main(["--merge", str(tmp_path / "a" / "calibration.json"), str(tmp_path / "calibration.json"),
                           "--monotone", "isotonic", "--out", str(tmp_path / "a")]) == 0
    merged = Calibration.load(tmp_path / "a")
    assert merged.measured["0"] == pytest.approx([0.1, 0.7]) and merged.monotone == "isotonic"
    edits = tmp_path / "edits"  # curves of edits are written under the name the pipeline reads for their strength
    edits.mkdir()
    Calibration([0.0, 1.0], {"0": [0.0, 0.6]}, {**meta, "img2img_strength": 0.5}).save(edits, "seed0.json")
    Calibration([0.0, 1.0], {"0": [0.2, 0.6]}, {**meta, "img2img_strength": 0.5}).save(edits, "seed1.json")
    assert calibrate.main(["--merge", str(edits / "seed0.json"), str(edits / "seed1.json"), "--out", str(edits)]) == 0
    assert Calibration.load(edits, "calibration-img2img-strength0.5.json").measured["0"] == pytest.approx([0.1, 0.6])


@pytest.mark.slow
def test_controllability_quick_on_tiny_models(tiny_dacd, tiny_baseline, tiny_evaluator, tiny_scores, fake_fmnist,
                                              tmp_path):
    run_script("bench/controllability.py", "--quick", "--model", tiny_dacd, "--baseline", tiny_baseline,
               "--evaluator", tiny_evaluator, "--scorer", tiny_scores / "classifier",
               "--scores", tiny_scores / "scores.parquet", "--data-dir", fake_fmnist,
               "--classes", "0", "Trouser", "--steps", "2", "--out", tmp_path, "--no-progress")
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert list(cells.columns) == ["source", "label", "class_name", "bin", "n", "measured_mean", "measured_std",
                                   "accuracy", "abs_error", "real_train_count", "kid"]
    dacd = cells[cells.source == "dacd"]
    assert len(dacd) == 2 * 10 and (dacd.n == 3).all() and dacd.measured_mean.between(0, 1).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"dacd", "baseline", "real_ceiling"} <= set(summary["medium_band_share"])
    assert (tmp_path / "controllability.html").stat().st_size > 10000
    cal = Calibration.load(tmp_path)  # the curve of this grid, measured by the scorer
    assert cal is not None and set(cal.measured) == {"0", "1"} and cal.meta["measured_by"] == "classifier"
    assert Calibration.load(tiny_dacd) is None  # a benchmark writes nothing into the model folder


@pytest.mark.slow
def test_calibrate_stage_fits_every_class(tiny_dacd, tiny_scores, tmp_path):
    run_script("train/calibrate.py", "--model", tiny_dacd, "--scorer", tiny_scores / "classifier", "--n", "2",
               "--steps", "2", "--out", tmp_path, "--no-progress")
    cal = Calibration.load(tmp_path)
    assert set(cal.measured) == {str(c) for c in range(10)} and len(cal.requested) == 10
    assert all(0 <= v <= 1 for curve in cal.measured.values() for v in curve)
    assert cal.meta["n_per_cell"] == 2 and cal.meta["measured_by"] == "classifier"


@pytest.mark.slow
def test_calibrate_committee_curve_is_the_mean_of_its_members_curves(tiny_dacd, tiny_checkpoint, tmp_path):
    import shutil

    calibrate = load_module(ROOT / "train" / "calibrate.py")
    from dacd.classifier import build_classifier

    a, b = tiny_checkpoint / "classifier", tmp_path / "classifier-b"
    torch.manual_seed(0)  # another architecture, untrained: it measures the images otherwise
    build_classifier("resnet14t", in_chans=1, num_classes=10).save_pretrained(b)
    common = ["--model", str(tiny_dacd), "--n", "2", "--steps", "2", "--no-progress",
              "--evaluator", str(tiny_checkpoint / "evaluator")]
    for name, extra in (("a", ["--scorer", str(a)]), ("b", ["--scorer", str(b)]),
                        ("ab", ["--committee", str(a), str(b)])):
        assert calibrate.main([*common, *extra, "--out", str(tmp_path / name)]) == 0
    one, two, both = (Calibration.load(tmp_path / k) for k in ("a", "b", "ab"))
    assert one.measured != two.measured  # the members disagree, so the mean is a real test
    for c in both.measured:  # the same images (same seed), so the cell means average
        assert both.measured[c] == pytest.approx((np.array(one.measured[c]) + np.array(two.measured[c])) / 2)
    assert both.meta["committee"] == ["classifier", "classifier-b"] and "committee mean" in both.meta["measured_by"]
    with pytest.raises(SystemExit, match="not both"):
        calibrate.main([*common, "--scorer", str(a), "--committee", str(a), str(b), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="evaluation classifier"):  # the judge never fits the curve
        calibrate.main([*common, "--committee", str(a), str(tiny_checkpoint / "evaluator"), "--out", str(tmp_path)])
    shutil.copytree(tiny_checkpoint / "evaluator", tmp_path / "classifier-c")  # not under another name either
    with pytest.raises(SystemExit, match="evaluation classifier"):
        calibrate.main([*common, "--committee", str(a), str(tmp_path / "classifier-c"), "--out", str(tmp_path)])
    model = copy_dacd(tiny_dacd, tmp_path / "dacd")  # bench/controllability.py refuses a curve its judge fitted
    from dacd.weights import model_fingerprint

    controllability = load_module(ROOT / "bench" / "controllability.py")
    for meta in ({"committee": ["classifier", "evaluator"]},  # by name
                 {"member_fingerprints": [model_fingerprint(tiny_checkpoint / "evaluator")]}):  # by content
        Calibration(both.requested, both.measured, {**both.meta, **meta}).save(model)
        with pytest.raises(SystemExit, match="the evaluator that judges it"):
            controllability.main(["--calibrated", "--model", str(model), "--evaluator",
                                  str(tiny_checkpoint / "evaluator"), "--baseline", "", "--out", str(tmp_path / "ctrl")])


@pytest.mark.slow
def test_calibrate_img2img_curve_loads_for_edits_at_its_strength(tiny_dacd, tiny_scores, fake_fmnist, tmp_path):
    from dacd.img2img import DifficultyControlledImg2ImgPipeline

    model = copy_dacd(tiny_dacd, tmp_path / "dacd")
    run_script("train/calibrate.py", "--model", model, "--scorer", tiny_scores / "classifier", "--n", "2",
               "--steps", "4", "--img2img-strength", "0.5", "--data-dir", fake_fmnist, "--no-progress")
    assert (model / "calibration-img2img-strength0.5.json").is_file()
    edit = DifficultyControlledImg2ImgPipeline.from_pretrained(model)
    assert list(edit.img2img_calibrations) == [0.5]
    assert edit.img2img_calibrations[0.5].meta["img2img_strength"] == 0.5
    image = np.zeros((32, 32), np.uint8)
    out = edit("Shirt", 0.4, image=image, strength=0.5, calibrated=True, num_inference_steps=4, output_type="np")
    assert out.conditioning_difficulties == [pytest.approx(edit.img2img_calibrations[0.5].invert(6, 0.4))]
    with pytest.raises(ValueError, match=r"strength 0.7; this checkpoint has curves for strengths \[0.5\]"):
        edit("Shirt", 0.4, image=image, strength=0.7, calibrated=True, num_inference_steps=4)


def test_calibration_fit_takes_the_mean_per_class_and_grid_value():
    rows = pd.DataFrame({"label": [0, 0, 0, 0, 1, 1, 1, 1], "requested_s": [0.1, 0.1, 0.9, 0.9] * 2,
                         "measured_s": [0.2, 0.4, 0.6, 1.0, 0.0, 0.1, 0.5, 0.5]})
    cal = Calibration.fit(rows.sample(frac=1.0, random_state=0), meta={"n": 2})  # order does not matter
    assert cal.requested == [0.1, 0.9]
    assert cal.measured["0"] == pytest.approx([0.3, 0.8]) and cal.measured["1"] == pytest.approx([0.05, 0.5])
    with pytest.raises(ValueError, match="lacks images"):
        Calibration.fit(rows.iloc[:6])  # class 1 has no image at 0.9


def test_controllability_means_averages_judge_seeds_and_names_missing_ones(tmp_path):
    from dacd.evaluation import controllability_means

    def judged(name, spearman, mae=0.1, medium=0.2, acc=0.9, per_class=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "dacd": {"spearman_overall": spearman, "mae": mae, "spearman_per_class": per_class or {"Bag": spearman}},
            "medium_band_share": {"dacd": medium}, "accuracy_at_s_le_0.2": acc}))
        return str(folder)

    src = {"a, run 0": {1: judged("a1", 0.8, per_class={"Bag": 0.5, "Coat": 0.9}),
                        2: judged("a2", 0.6, mae=0.3, per_class={"Bag": 0.7, "Coat": 0.2})},
           "a, run 1": {1: str(tmp_path / "never"), 2: judged("b2", 0.9)},
           "c, run 0": {1: str(tmp_path / "nowhere")}}
    lines = controllability_means(src, title="t").splitlines()
    assert lines[0].startswith("| t |")
    assert lines[2] == "| a, run 0 | 0.800, 0.600 | 0.700 | 0.200 | 20.0% | 90.0% | Coat 0.55 |"
    assert lines[3].startswith("| a, run 1 (judge seed 2 only) | 0.900 | 0.900 |")
    assert lines[4] == "| c, run 0 | not run | | | | | |"
    # the arm: the mean of its runs' means; judge seed 1 alone only from the runs that have it
    assert lines[-1] == "a: mean Spearman over its 2 training runs 0.800 (range 0.700-0.900); at judge seed 1 alone 0.800 (0.800-0.800)"
