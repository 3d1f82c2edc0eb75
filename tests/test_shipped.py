"""The shipped embedded default: it loads offline and agrees with its own records."""

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CK = ROOT / "checkpoints" / "fashion-mnist"


def test_every_shipped_file_is_small_enough_for_spaces():
    files = [p for p in CK.rglob("*") if p.is_file()]
    assert files
    too_big = [(str(p.relative_to(CK)), p.stat().st_size) for p in files if p.stat().st_size >= 10 * 2**20]
    assert not too_big
    assert sum(p.stat().st_size for p in files) < 100 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]  # no pickles


def test_scores_table_matches_the_shipped_classifier():
    from dacd.classifier import Classifier, predict
    from dacd.data import load_fashion_mnist
    from dacd.difficulty import SCORE_COLUMNS, load_scores

    table = load_scores(CK / "scores.parquet")
    assert list(table.columns) == SCORE_COLUMNS and len(table) == 70_000 and table.id.is_unique
    summary = json.loads((CK / "scores_summary.json").read_text())
    assert summary["oof_accuracy"] >= 0.90
    test = load_fashion_mnist("test").subset(range(300))
    clf = Classifier.from_pretrained(CK / "classifier")
    probs = predict(clf, test.images)
    rows = table.set_index("id").loc[list(test.ids)]
    assert (rows.fold == -1).all()
    assert (probs.argmax(1) == rows.pred.to_numpy()).mean() >= 0.99  # stored fp16 weights, same predictions
    np.testing.assert_allclose(1 - probs[np.arange(300), test.labels], rows.s, atol=0.02)


@pytest.mark.skipif(not (CK / "base" / "model_index.json").exists(), reason="base not shipped yet")
def test_shipped_base_loads_offline_in_stock_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(CK / "base", safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a Trouser", height=32, width=32, num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 1) and np.isfinite(out).all()


@pytest.mark.skipif(not (CK / "dacd" / "dacd_config.json").exists(), reason="dacd model not shipped yet")
def test_shipped_dacd_generates_and_calibrates():
    from dacd.pipeline import DifficultyControlledPipeline

    pipe = DifficultyControlledPipeline.from_pretrained(CK / "dacd")
    pipe.set_progress_bar_config(disable=True)
    out = pipe([6, 6], [0.1, 0.9], num_inference_steps=3, output_type="np")
    assert out.images.shape == (2, 32, 32, 1)
    if pipe.calibration is not None:
        from dacd.calibration import CalibrationSettingsWarning

        with pytest.warns(CalibrationSettingsWarning, match=r"steps 2 \(curve: 15\)"):  # 2 steps: a quick check
            cal = pipe([6], [0.4], calibrated=True, num_inference_steps=2, output_type="np")
        assert cal.conditioning_difficulties[0] == pytest.approx(pipe.calibration.invert(6, 0.4))


def test_reference_images_are_reproduced_to_float_rounding():
    """Images saved before the one-house refactor (tests/reference_images.py), as uint8. Float
    rounding follows the CPU's kernels: with the reference's vector instruction set at most 1 grey
    level on at most 0.1% of pixels (an AMD EPYC with AVX512 put 1 of 18,432 pixels 1 level off
    images rendered on another AVX512 machine); with another instruction set at most 2 grey levels
    on at most 1% of pixels. A change of behaviour moves far more."""
    import torch
    from reference_images import PATH, load_pipes, render

    ref = np.load(PATH)
    now = render(load_pipes(CK))
    same_isa = str(ref["cpu_capability"]) == torch.backends.cpu.get_cpu_capability()
    for name, images in now.items():
        diff = np.abs(images.astype(int) - ref[name].astype(int))
        if same_isa:
            assert diff.max() <= 1 and (diff > 0).mean() <= 0.001, \
                f"{name}: {int((diff > 0).sum())} pixels differ (max {diff.max()})"
        else:
            assert diff.max() <= 2 and (diff > 0).mean() <= 0.01, name


@pytest.mark.slow
@pytest.mark.skipif(not (CK / "dacd" / "dacd_config.json").exists(), reason="dacd model not shipped yet")
def test_committed_downstream_cells_stay_found_whatever_the_calibration_curve(tmp_path):
    """The results in bench/results/downstream/ are reprinted from their committed cells: the shipped
    dacd's set identities must not move when its calibration curve is refitted (no downstream set
    samples calibrated), so a copy of the folder with another curve finds the same cells."""
    import shutil

    from conftest import run_script

    model = tmp_path / "ck" / "dacd"
    shutil.copytree(CK / "dacd", model)
    (tmp_path / "ck" / "base").symlink_to(CK / "base")
    cal = json.loads((model / "calibration.json").read_text())
    cal["measured"] = {k: sorted(v) for k, v in cal["measured"].items()}
    cal["meta"]["monotone"] = "isotonic"
    (model / "calibration.json").write_text(json.dumps(cal))
    committee = [CK / name for name in ("classifier", "classifier-2", "classifier-3")]
    # the README's chosen sampling (mu-pooled-c3 g1d3), whose cells were run on the shipped dacd
    out = run_script("train/downstream.py", "--cached-only", "--model", model, "--arms", "dacd", "--samplings",
                     "pooled", "--pool-difficulty", "plan", "--pool-factor", "12", "--tolerance", "0.1",
                     "--guidance-scales", "1", "--difficulty-guidance", "3", "--committee", *committee,
                     "--mus", "0.5", "--ratios", "0.25", "--seeds", "0", "1", "--headline-seeds", "0", "1",
                     "--cells-dir", ROOT / "bench" / "results" / "downstream" / "cells", "--out", tmp_path / "out",
                     "--no-progress")
    assert "4 of 4 cell runs done" in out.stdout  # real-only and dacd, 2 seeds each: none missing
    runs = (tmp_path / "out" / "runs.csv").read_text()
    assert runs.count("dacd mu-pooled-c3 g1d3 mu=0.5 r=0.25,") == 2
