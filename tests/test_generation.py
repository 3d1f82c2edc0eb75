"""Synthetic-set generation: deterministic plans, kill-and-resume, multi-process runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, load_module, run_script

from dacd.data import FASHION_MNIST_CLASSES, stratified_subset
from dacd.defaults import recorded_model
from dacd.generation import (
    MANIFEST_COLUMNS,
    Anchoring,
    DifficultySpec,
    GenerationError,
    assign_anchors,
    counts_from_ratio,
    generate_dataset,
    load_prompt_lists,
    make_plan,
    plan_fingerprint,
    take_first,
)

NAMES = list(FASHION_MNIST_CLASSES)


def test_plan_is_a_function_of_the_id():
    small = make_plan(NAMES, {0: 3, 6: 2}, seed=7)
    big = make_plan(NAMES, {0: 10, 6: 8}, seed=7)
    assert list(small.id) == ["t-shirt-top-000000", "t-shirt-top-000001", "t-shirt-top-000002",
                              "shirt-000000", "shirt-000001"]
    pd.testing.assert_frame_equal(small.set_index("id"), big.set_index("id").loc[small.id])
    assert big.seed.is_unique
    other_seed = make_plan(NAMES, {0: 3, 6: 2}, seed=8)
    assert not np.allclose(other_seed.requested_s, small.requested_s)


def test_requested_s_follows_the_asked_distribution():
    from scipy import stats

    plan = make_plan(NAMES, 400, DifficultySpec(mu=0.5, sigma=0.1), seed=0)
    s = plan.requested_s.to_numpy()
    assert len(s) == 4000 and s.min() >= 0 and s.max() <= 1
    assert abs(s.mean() - 0.5) < 0.01 and abs(s.std() - 0.1) < 0.01
    assert stats.kstest(s, stats.norm(0.5, 0.1).cdf).pvalue > 0.01
    # a wrong hypothesis is rejected: the test has power
    assert stats.kstest(s, stats.norm(0.55, 0.1).cdf).pvalue < 1e-6
    # near the edge the clipping puts mass exactly on the bound
    edge = make_plan(NAMES, {0: 2000}, DifficultySpec(mu=0.95, sigma=0.1)).requested_s
    assert 0.25 < (edge == 1.0).mean() < 0.45  # P(N(0.95, 0.1) > 1) = 0.31


def test_fixed_and_per_class_difficulty():
    fixed = make_plan(NAMES, {1: 5}, DifficultySpec(kind="fixed", value=0.7))
    assert (fixed.requested_s == 0.7).all()
    table = make_plan(NAMES, {0: 300, 6: 300},
                      DifficultySpec(kind="table", mu=0.2, sigma=0.05, table={"Shirt": [0.8, 0.05]}))
    assert abs(table[table.label == 6].requested_s.mean() - 0.8) < 0.02
    assert abs(table[table.label == 0].requested_s.mean() - 0.2) < 0.02
    for bad in (dict(mu=1.5), dict(sigma=-0.1), dict(kind="fixed"), dict(kind="fixed", value=float("nan")),
                dict(kind="table", table={"Shirt": [2, 0.1]})):
        with pytest.raises(GenerationError):
            DifficultySpec(**bad)


def test_prompt_lists(tmp_path):
    j = tmp_path / "captions.json"
    j.write_text(json.dumps({"Shirt": ["a plaid shirt", "a white shirt"], "0": ["a striped tee"]}))
    lists = load_prompt_lists(j, NAMES)
    assert lists == {6: ["a plaid shirt", "a white shirt"], 0: ["a striped tee"]}
    t = tmp_path / "captions.txt"
    t.write_text("# comment\nshirt\ta plaid shirt\nCoat: a long coat\n\n")
    assert load_prompt_lists(t, NAMES) == {6: ["a plaid shirt"], 4: ["a long coat"]}
    plan = make_plan(NAMES, {6: 50, 4: 5}, prompts=lists)
    assert set(plan[plan.label == 6].prompt) == {"a plaid shirt", "a white shirt"}
    assert (plan[plan.label == 4].prompt == "a photo of a Coat").all()  # no list: the template
    (tmp_path / "bad.json").write_text(json.dumps({"Jacket": ["x"]}))
    with pytest.raises(GenerationError, match="Jacket"):
        load_prompt_lists(tmp_path / "bad.json", NAMES)


def test_counts_subsets_and_take_first():
    labels = np.repeat(np.arange(3), [100, 40, 8])
    idx = stratified_subset(labels, 0.25, seed=1)
    assert np.bincount(labels[idx]).tolist() == [25, 10, 2]
    assert np.array_equal(idx, stratified_subset(labels, 0.25, seed=1))
    counts = counts_from_ratio(labels[idx], 0.4, 3)
    assert counts == {0: 10, 1: 4, 2: 1}
    big = make_plan(["a", "b", "c"], {0: 10, 1: 10, 2: 10})
    small = take_first(big, {0: 4, 1: 2, 2: 1})
    assert list(small.id) == ["a-000000", "a-000001", "a-000002", "a-000003", "b-000000", "b-000001", "c-000000"]
    with pytest.raises(GenerationError, match="generate more"):
        take_first(big, {0: 11})


# ---------------------------------------------------------------- end to end (tiny model)

def gen_args(out, model, evaluator, *extra):
    return ["train/generate.py", "--out", out, "--model", model, "--evaluator", evaluator, "--per-class", "3",
            "--classes", "T-shirt/top", "Shirt", "Bag", "--steps", "2", "--batch-size", "2", "--seed", "5",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dacd, tiny_evaluator, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "full"
    run_script(*gen_args(out, tiny_dacd, tiny_evaluator))
    return out


def test_the_plan_uses_the_models_prompt_template(tmp_path):
    """train/generate.py plans with the model's own template (dacd_config.json), not a literal."""
    script = load_module(ROOT / "train" / "generate.py")
    args = script.parse_args(["--out", str(tmp_path), "--per-class", "2", "--classes", "Bag", "Coat"])
    plan, _, _ = script.build_plan(args, NAMES, "a sketch of a {}")
    assert set(plan.prompt) == {"a sketch of a Bag", "a sketch of a Coat"}
    captions = tmp_path / "captions.txt"
    captions.write_text("Bag\ta leather bag\n")
    args = script.parse_args(["--out", str(tmp_path), "--per-class", "1", "--classes", "Bag", "Coat",
                              "--prompts", str(captions)])
    plan, _, _ = script.build_plan(args, NAMES, "a sketch of a {}")
    assert list(plan.prompt) == ["a sketch of a Coat", "a leather bag"]  # captions where given


def read_manifest(out):
    return pd.read_parquet(out / "manifest.parquet")


@pytest.mark.slow
def test_manifest_schema_and_images(uninterrupted):
    from dacd.data import load_image_folder

    m = read_manifest(uninterrupted)
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(m) == 9 and m.id.is_unique
    assert set(m["class"]) == {"T-shirt/top", "Shirt", "Bag"}
    assert m.measured_s.between(0, 1).all() and m.predicted_class.isin(NAMES).all()
    assert (m.requested_s == m.conditioning_s).all()
    assert (m.real_subset == "").all()  # counts given per class, not as a ratio
    folder = load_image_folder(uninterrupted, image_size=32)  # a plain ImageFolder
    assert len(folder) == 9 and folder.images.shape[1:] == (1, 32, 32)
    assert sorted(folder.class_names) == ["bag", "shirt", "t-shirt-top"]
    cfg = json.loads((uninterrupted / "generation.json").read_text())
    assert cfg["num_images"] == 9 and "N(0.5, 0.1)" in cfg["difficulty"]["description"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_manifest(uninterrupted, tiny_dacd, tiny_evaluator, tmp_path):
    out = tmp_path / "resumed"
    proc = run_script(*gen_args(out, tiny_dacd, tiny_evaluator, "--stop-after-chunks", "2"), check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not (out / "manifest.parquet").exists()
    assert len(list(out.glob(".chunk-*.parquet"))) == 2
    (out / "shirt" / ".shirt-000001.png.tmp-999").write_bytes(b"half a png")  # killed mid-write
    # a set that recorded its model as spelled (before dacd.defaults.recorded_model) resumes all the same
    cfg = json.loads((out / "generation.json").read_text())
    assert cfg["model"] == recorded_model(tiny_dacd)
    cfg["model"] = os.path.relpath(tiny_dacd, ROOT)
    (out / "generation.json").write_text(json.dumps(cfg))
    run_script(*gen_args(out, tiny_dacd, tiny_evaluator))
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(uninterrupted))
    for p in read_manifest(out).path:
        assert (out / p).read_bytes() == (uninterrupted / p).read_bytes()
    assert not list(out.rglob(".*.tmp-*"))
    # a finished set is not regenerated, and other settings are refused
    again = run_script(*gen_args(out, tiny_dacd, tiny_evaluator))
    assert '"complete": true' in again.stdout
    proc = run_script(*gen_args(out, tiny_dacd, tiny_evaluator, "--mu", "0.8"), check=False)
    assert proc.returncode != 0 and "other settings" in proc.stderr
    assert "difficulty.mu: 0.5 in the folder, 0.8 now" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_make_each_id_once(uninterrupted, tiny_dacd, tiny_evaluator, tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *map(str, gen_args(out, tiny_dacd, tiny_evaluator))]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = read_manifest(out)
    assert m.id.is_unique and sorted(m.id) == sorted(read_manifest(uninterrupted).id)
    # the same chunks with the same seeds: the same images as one process made
    pd.testing.assert_frame_equal(m, read_manifest(uninterrupted), check_exact=False, atol=1e-4)


@pytest.mark.slow
def test_baseline_and_bad_requests(tiny_baseline, tiny_dacd, tiny_evaluator, tmp_path):
    out = tmp_path / "base"
    run_script(*gen_args(out, tiny_baseline, tiny_evaluator, "--s", "0.9"))
    m = read_manifest(out)
    assert (m.requested_s == 0.9).all() and m.conditioning_s.isna().all()
    uncalibrated = tmp_path / "dacd"  # another test may write a calibration curve into tiny_dacd
    shutil.copytree(tiny_dacd, uncalibrated)
    (uncalibrated / "calibration.json").unlink(missing_ok=True)
    for extra, message in ((["--mu", "1.4"], "mu must be in [0, 1]"),
                           (["--classes", "Jacket"], "Jacket"),
                           (["--calibrated"], "calibration"),
                           (["--feedback-scale", "1", "--feedback-scorer", str(tiny_evaluator)], "must not steer"),
                           (["--feedback-scale", "1", "--feedback-scorer", str(tiny_evaluator / "nowhere")],
                            "nowhere"),
                           (["--feedback-scale", "1", "--scheduler", "euler", "--feedback-scorer",
                             str(tiny_evaluator), "--evaluator", "none"], "DPM++")):
        proc = run_script(*gen_args(tmp_path / "bad", uncalibrated, tiny_evaluator, *extra), check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "bad" / "generation.json").exists()  # refused before the folder is claimed
    from dacd.classifier import build_classifier

    other = tmp_path / "three-class-evaluator"  # an evaluator for another label set
    build_classifier("resnet10t", in_chans=1, num_classes=3, class_names=["a", "b", "c"]).save_pretrained(other)
    proc = run_script(*gen_args(tmp_path / "bad2", uncalibrated, other), check=False)
    assert proc.returncode != 0 and "evaluation classifier knows ['a', 'b', 'c']" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- anchored sampling (edits of real images)

def test_anchors_are_deterministic_per_class_and_prefix_stable():
    ids = np.array([f"train:{i}" for i in range(12)])
    labels = np.array([0, 1, 2] * 4)
    big = assign_anchors(make_plan(NAMES[:3], {0: 6, 1: 2, 2: 0}, seed=1), ids, labels, seed=3)
    small = assign_anchors(make_plan(NAMES[:3], {0: 3, 1: 1}, seed=1), ids, labels, seed=3)
    for c in (0, 1):
        b = big[big.label == c].anchor_id.tolist()
        assert small[small.label == c].anchor_id.tolist() == b[:len(small[small.label == c])]
        assert all(labels[int(a.split(":")[1])] == c for a in b)  # an anchor of the row's own class
    first = big[big.label == 0].anchor_id.tolist()
    assert len(set(first[:4])) == 4 and first[4:] == first[:2]  # 4 anchors of class 0, then cycling
    again = assign_anchors(make_plan(NAMES[:3], {0: 6, 1: 2}, seed=1), ids, labels, seed=3)
    assert again.anchor_id.tolist()[:8] == big.anchor_id.tolist()[:8]
    other = assign_anchors(make_plan(NAMES[:3], {0: 6, 1: 2}, seed=1), ids, labels, seed=4)
    assert other.anchor_id.tolist() != again.anchor_id.tolist()
    assert plan_fingerprint(other) != plan_fingerprint(again)
    assert plan_fingerprint(again.drop(columns="anchor_id")) != plan_fingerprint(again)
    with pytest.raises(GenerationError, match="no real image of class 'Pullover'"):
        assign_anchors(make_plan(NAMES[:3], {2: 1}), ids, np.zeros(12, int))
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(GenerationError, match=r"strength must be in \(0, 1\]"):
            Anchoring(bad)


def test_anchored_settings_that_cannot_run_are_refused_before_the_folder_is_claimed(tmp_path):
    from test_pipeline import CLASSES, dummy_pipeline

    from dacd.sampling import SamplingSettings

    plan = assign_anchors(make_plan(CLASSES, {0: 2}), ["train:0", "train:1"], [0, 0])
    anchors = {"train:0": np.zeros((1, 32, 32), np.uint8), "train:1": np.zeros((1, 32, 32), np.uint8)}
    out = tmp_path / "set"
    for anchoring, sampling, match in ((Anchoring(0.05), SamplingSettings(num_inference_steps=10), "less than one"),
                                       (Anchoring(0.5), SamplingSettings(num_inference_steps=10, calibrated=True),
                                        "curve fitted for img2img at strength 0.5")):
        with pytest.raises(GenerationError, match=match):
            generate_dataset(dummy_pipeline(), plan, out, model_id="tiny", anchoring=anchoring, anchors=anchors,
                             sampling=sampling, progress=False)
        assert not (out / "generation.json").exists()


def test_strength_without_anchor_is_refused(tmp_path):
    script = load_module(ROOT / "train" / "generate.py")
    args = script.parse_args(["--out", str(tmp_path), "--per-class", "2", "--strength", "0.5"])
    with pytest.raises(GenerationError, match="add --anchor real"):
        script.build_plan(args, NAMES)


@pytest.mark.slow
def test_an_anchored_pool_from_the_script_keeps_edits_of_subset_images(tiny_dacd, tiny_evaluator, tiny_scores,
                                                                      fake_fmnist, tmp_path):
    """generate.py --pool with --anchor real: a pool of edits, matched; each kept image names its anchor."""
    from dacd.data import load_dataset

    out = tmp_path / "apool"
    run_script(*gen_args(out, tiny_dacd, tiny_evaluator, "--anchor", "real", "--strength", "0.6", "--real-fraction",
                         "0.1", "--data-dir", fake_fmnist, "--pool", "2", "--committee", tiny_scores / "classifier"))
    m, pool = read_manifest(out), read_manifest(tmp_path / "apool-pool")
    assert json.loads((out / "generation.json").read_text())["sampling_mode"] == "anchored-pooled"
    assert json.loads((tmp_path / "apool-pool" / "generation.json").read_text())["anchoring"]["strength"] == 0.6
    real = load_dataset("fashion-mnist", "train", fake_fmnist)
    subset = set(np.asarray(real.ids)[stratified_subset(real.labels, 0.1, 0)])
    label_of = dict(zip(np.asarray(real.ids), real.labels))
    assert len(pool) == 2 * len(m) == 18 and set(pool.anchor_id) <= subset
    assert all(label_of[a] == lab for a, lab in zip(pool.anchor_id, pool.label))
    assert (m.anchor_id.to_numpy() == pool.set_index("id").loc[m.pool_id, "anchor_id"].to_numpy()).all()


@pytest.mark.slow
def test_a_pool_drawn_at_the_plans_difficulty_from_the_script(tiny_dacd, tiny_evaluator, tiny_scores, tmp_path):
    """generate.py --pool-difficulty plan: the pool is conditioned on the plan's spec and says so;
    without --pool the flag is refused."""
    out = tmp_path / "mupool"
    run_script(*gen_args(out, tiny_dacd, tiny_evaluator, "--mu", "0.8", "--sigma", "0.05", "--pool", "2",
                         "--pool-difficulty", "plan", "--committee", tiny_scores / "classifier"))
    m, pool = read_manifest(out), read_manifest(tmp_path / "mupool-pool")
    drawn = json.loads((tmp_path / "mupool-pool" / "generation.json").read_text())["difficulty"]
    assert drawn["kind"] == "normal" and drawn["mu"] == 0.8 and "N(0.8, 0.05)" in drawn["description"]
    assert len(pool) == 2 * len(m) and pool.requested_s.between(0.6, 1.0).all()
    assert set(m.pool_id) <= set(pool.id)
    proc = run_script(*gen_args(tmp_path / "nopool", tiny_dacd, tiny_evaluator, "--pool-difficulty", "plan"),
                      check=False)
    assert proc.returncode != 0 and "--pool-difficulty applies to a pool" in proc.stderr
    # the tiered label rule, matched from the same pool: no generation, a `tier` per row
    run_script(*gen_args(tmp_path / "tiered", tiny_dacd, tiny_evaluator, "--mu", "0.8", "--sigma", "0.05", "--pool",
                         "2", "--pool-difficulty", "plan", "--pool-dir", tmp_path / "mupool-pool", "--committee",
                         tiny_scores / "classifier", "--looser-committee", tiny_scores / "classifier"))
    t = read_manifest(tmp_path / "tiered")  # a looser committee equal to the strict one: the same set
    assert len(read_manifest(tmp_path / "mupool-pool")) == len(pool)
    assert list(t.pool_id) == list(m.pool_id) and (t.tier == 0).all() and "tier" not in m
    assert json.loads((tmp_path / "tiered" / "generation.json").read_text())["pool"]["looser_committees"]
    proc = run_script(*gen_args(tmp_path / "noloose", tiny_dacd, tiny_evaluator, "--looser-committee",
                                tiny_scores / "classifier"), check=False)
    assert proc.returncode != 0 and "--looser-committee is a label rule of pooled sets" in proc.stderr
    # a pool steered by a committee's feedback (two scorers): recorded in the set and its pool
    clf = tiny_scores / "classifier"
    run_script(*gen_args(tmp_path / "fbpool", tiny_dacd, tiny_evaluator, "--mu", "0.8", "--sigma", "0.05", "--pool",
                         "2", "--pool-difficulty", "plan", "--committee", clf, "--feedback-scale", "0.5",
                         "--feedback-steps", "2", "--feedback-scorer", clf, clf))
    cfg = json.loads((tmp_path / "fbpool" / "generation.json").read_text())
    assert cfg["sampling_mode"] == "pooled+feedback" and cfg["pool"]["feedback"]["scorer"].startswith("committee ")
    assert json.loads((tmp_path / "fbpool-pool" / "generation.json").read_text())["feedback"]["steps"] == 2


@pytest.mark.slow
def test_anchored_set_edits_real_images_of_the_subset(tiny_dacd, tiny_evaluator, fake_fmnist, tmp_path):
    out = tmp_path / "anchored"

    def anchored(strength, folder=out):
        return gen_args(folder, tiny_dacd, tiny_evaluator, "--anchor", "real", "--strength", strength,
                        "--real-fraction", "0.1", "--data-dir", fake_fmnist)

    proc = run_script(*anchored("0.6"), "--stop-after-chunks", "2", check=False)  # killed after 2 of 5 chunks
    assert proc.returncode == 3 and len(list(out.glob(".chunk-*.parquet"))) == 2, proc.stderr[-2000:]
    run_script(*anchored("0.6"))  # resumed: the anchors of the missing chunks come from the same plan
    m = read_manifest(out)
    cfg = json.loads((out / "generation.json").read_text())
    assert cfg["sampling_mode"] == "anchored" and cfg["anchoring"] == {"strength": 0.6, "seed": 0}
    from dacd.data import load_dataset

    real = load_dataset("fashion-mnist", "train", fake_fmnist)
    subset = set(np.asarray(real.ids)[stratified_subset(real.labels, 0.1, 0)])
    assert set(m.anchor_id) <= subset
    label_of = dict(zip(np.asarray(real.ids), real.labels))
    assert all(label_of[a] == lab for a, lab in zip(m.anchor_id, m.label))
    # each image is the img2img edit of its anchor with the row's seed (the wiring, exactly)
    import torch

    from dacd.generation import load_generated_images, to_uint8
    from dacd.img2img import DifficultyControlledImg2ImgPipeline

    edit = DifficultyControlledImg2ImgPipeline.from_pretrained(tiny_dacd)
    edit.set_progress_bar_config(disable=True)
    index = {i: k for k, i in enumerate(np.asarray(real.ids))}
    rows = m.iloc[[0, 4]]
    anchors = [real.images[index[a]].transpose(1, 2, 0) for a in rows.anchor_id]
    again = edit(rows.label.tolist(), rows.requested_s.tolist(), image=anchors, strength=0.6, num_inference_steps=2,
                 generator=[torch.Generator().manual_seed(int(x)) for x in rows.seed], output_type="np").images
    np.testing.assert_array_equal(to_uint8(again).transpose(0, 3, 1, 2), load_generated_images(out, rows))
    other = edit(rows.label.tolist(), rows.requested_s.tolist(), image=anchors[::-1], strength=0.6,
                 num_inference_steps=2, generator=[torch.Generator().manual_seed(int(x)) for x in rows.seed],
                 output_type="np").images
    assert not np.array_equal(to_uint8(other), to_uint8(again))  # the anchor matters
    # the same command with another strength is refused, naming the setting (in-process: the script's own plan)
    from dacd.sampling import SamplingSettings

    script = load_module(ROOT / "train" / "generate.py")
    args = script.parse_args([str(a) for a in anchored("0.5")[1:]])
    plan, extra, subset = script.build_plan(args, NAMES, edit.prompt_template)
    plan, anchors = script.anchored(plan, subset, 0)
    with pytest.raises(GenerationError, match=r"anchoring.strength: 0.6 in the folder, 0.5 now"):
        generate_dataset(edit, plan, out, model_id=str(tiny_dacd), anchoring=Anchoring(0.5), anchors=anchors,
                         sampling=SamplingSettings(num_inference_steps=2), batch_size=2, extra_config=extra,
                         progress=False)
