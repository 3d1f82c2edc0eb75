"""Selection (sampling "selected"): tries seeded per row and try, only in-band images accepted,
resume and process splits give the same set. In-process, on tiny components."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_module
from test_pipeline import CLASSES, dummy_pipeline

from dacd.classifier import build_classifier
from dacd.defaults import MEDIUM_BAND
from dacd.evaluation import measure
from dacd.generation import (
    Anchoring,
    DifficultySpec,
    GenerationError,
    Pooling,
    Selection,
    anchor_images,
    assign_anchors,
    committee_key,
    committee_scores,
    generate_dataset,
    generate_pooled_set,
    load_generated_images,
    load_manifest,
    make_plan,
    make_pool_plan,
    match_pool,
    match_tiered,
    read_png,
)
from dacd.sampling import SamplingSettings, try_seed

FAST = SamplingSettings(num_inference_steps=2, scheduler="ddim", guidance_scale=2.0, difficulty_guidance_scale=3.0)


@pytest.fixture(scope="module")
def pipe():
    return dummy_pipeline()


@pytest.fixture(scope="module")
def committee():
    """Two untrained classifiers of other architectures whose heads lean to T-shirt/top: images of
    that class measure near s = 0.5 with some spread, images of other classes are never top-1."""
    out = []
    for seed, arch in ((0, "resnet10t"), (1, "resnet14t")):
        torch.manual_seed(seed)
        clf = build_classifier(arch, in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()
        head = clf.model.get_classifier()
        with torch.no_grad():
            head.weight.mul_(0.05)
            head.bias.copy_(torch.tensor([1.1, 0.0, 0.0, 0.0]))
        out.append(clf)
    return out


def selected(pipe, committee, out, selection, **kw):
    plan = make_plan(CLASSES, 3, seed=4)
    return plan, generate_dataset(pipe, plan, out, model_id="tiny", sampling=FAST, batch_size=4, progress=False,
                                  selection=selection, committee=committee, **kw)


def test_accepted_rows_are_in_band_and_label_faithful(pipe, committee, tmp_path):
    sel = Selection(max_tries=3, tolerance=0.45, pilot=0)  # no pilot: each row conditioned on its request
    plan, summary = selected(pipe, committee, tmp_path / "set", sel)
    m = load_manifest(tmp_path / "set")
    assert summary["complete"] and list(m.id) == list(plan.id)
    imgs = np.stack([read_png(tmp_path / "set" / p) for p in m.path])
    s, faithful = committee_scores(committee, imgs, m.label.to_numpy())
    np.testing.assert_allclose(m.selection_s, s, atol=1e-6)  # measured on the stored image
    ok = (np.abs(s - m.requested_s) <= sel.tolerance) & faithful
    assert (m.accepted == ok).all()  # accepted exactly when in band and every member ranks the label first
    assert (m.tries[~m.accepted] == sel.max_tries).all() and m.tries.between(1, sel.max_tries).all()
    assert m.accepted.any() and not m.accepted.all()  # this setting exercises both outcomes
    assert set(summary["acceptance_per_class"]) == set(CLASSES)
    # a kept image is the image of its try's seed, from the row's seed
    row = m.iloc[int(np.argmax(m.tries.to_numpy()))]
    alone = pipe([int(row.label)], [float(row.requested_s)], generator=[
        torch.Generator().manual_seed(try_seed(int(row.seed), int(row.tries) - 1))] if row.accepted else None,
        output_type="np", num_inference_steps=2, scheduler="ddim", guidance_scale=2.0, difficulty_guidance_scale=3.0)
    if row.accepted:
        stored = read_png(tmp_path / "set" / row.path)[0]
        assert np.abs(np.rint(alone.images[0, ..., 0] * 255) - stored).max() <= 1


def test_without_the_label_rule_everything_within_tolerance_passes(pipe, committee, tmp_path):
    _, summary = selected(pipe, committee, tmp_path / "loose", Selection(max_tries=2, tolerance=1.0,
                                                                          label_rule=False, pilot=0))
    m = load_manifest(tmp_path / "loose")
    assert m.accepted.all() and (m.tries == 1).all() and summary["mean_tries"] == 1.0


def test_killed_resumed_and_split_runs_equal_one_run(pipe, committee, tmp_path):
    sel = Selection(max_tries=3, tolerance=0.45, pilot=1)  # with a pilot: each process fits or reuses the same one
    selected(pipe, committee, tmp_path / "one", sel)
    one = load_manifest(tmp_path / "one")
    _, first = selected(pipe, committee, tmp_path / "killed", sel, stop_after_chunks=1)
    assert not first["complete"]
    selected(pipe, committee, tmp_path / "killed", sel)
    for p in (0, 1):  # two processes, each its own chunks ...
        selected(pipe, committee, tmp_path / "split", sel, process_index=p, num_processes=2)
    assert not (tmp_path / "split" / "manifest.parquet").exists()  # (run one after the other: no barrier)
    chunks = {p: p.stat().st_mtime_ns for p in (tmp_path / "split").glob(".chunk-*")}
    _, merged = selected(pipe, committee, tmp_path / "split", sel)  # ... then the merge, generating nothing
    assert merged["complete"] and chunks == {p: p.stat().st_mtime_ns for p in (tmp_path / "split").glob(".chunk-*")}
    for other in ("killed", "split"):
        m = load_manifest(tmp_path / other)
        pd.testing.assert_frame_equal(m, one)
        for p in m.path:
            assert (tmp_path / other / p).read_bytes() == (tmp_path / "one" / p).read_bytes()
    with pytest.raises(GenerationError, match="selection"):  # other selection settings: refused
        selected(pipe, committee, tmp_path / "one", Selection(max_tries=4, tolerance=0.45, pilot=1))


def test_selection_needs_a_committee(pipe, tmp_path):
    with pytest.raises(GenerationError, match="committee"):
        selected(pipe, [], tmp_path / "x", Selection())
    with pytest.raises(GenerationError, match="max_tries"):
        Selection(max_tries=0)


def test_an_unset_tolerance_is_the_sampling_default_and_a_bad_one_is_refused():
    assert Selection(tolerance=None) == Selection() and Selection().tolerance == 0.05
    assert Pooling(tolerance=None) == Pooling() and Pooling().tolerance == 0.1
    for cls in (Selection, Pooling):
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(GenerationError, match=r"tolerance must be in \[0, 1\]"):
                cls(tolerance=bad)


def test_the_pilot_fits_per_class_conditioning_and_is_stored(pipe, committee, tmp_path):
    from dacd.calibration import Calibration
    from dacd.generation import CONFIG_NAME, fit_pilot

    out = tmp_path / "piloted"
    selected(pipe, committee, out, Selection(max_tries=2, tolerance=0.45, pilot=2))
    stored = json.loads((out / CONFIG_NAME).read_text())["pilot"]
    pilot = Calibration(**stored)
    assert pilot.meta["measured_by"] == "committee mean" and set(pilot.measured) == {"0", "1", "2", "3"}
    m = load_manifest(out)
    np.testing.assert_allclose(m.conditioning_s, [pilot.invert(c, t) for c, t in zip(m.label, m.requested_s)],
                               atol=1e-6)  # every row is conditioned through the pilot's curve of its class
    assert not np.allclose(m.conditioning_s, m.requested_s, atol=1e-3)
    again = fit_pilot(pipe, committee, [0, 1, 2, 3], FAST, 2, batch_size=4)  # deterministic: the same curve
    for key, values in pilot.measured.items():
        assert again.measured[key] == pytest.approx(values)
    with pytest.raises(GenerationError, match="pilot"):
        Selection(pilot=-1)


def test_a_faithful_pilot_averages_only_what_selection_could_accept(pipe, committee):
    from dacd.calibration import Calibration
    from dacd.generation import faithful_rows, fit_pilot

    rows = pd.DataFrame({"label": [0, 0, 0, 0], "requested_s": [0.1, 0.1, 0.9, 0.9],
                         "measured_s": [0.2, 0.9, 0.5, 0.7], "faithful": [True, False, False, False]})
    # cell 0.1: the faithful image only; cell 0.9 has none: all its images
    assert Calibration.fit(faithful_rows(rows)).measured["0"] == pytest.approx([0.2, 0.6])
    # through fit_pilot: the committee never ranks classes 1-3 first, so their curves fall back to all images
    plain = fit_pilot(pipe, committee, [1], FAST, 2, batch_size=4)
    faithful = fit_pilot(pipe, committee, [1], FAST, 2, batch_size=4, faithful_only=True)
    assert faithful.measured["1"] == pytest.approx(plain.measured["1"])
    assert "label-faithful" in faithful.meta["measured_by"] and "label-faithful" not in plain.meta["measured_by"]


def test_feedback_steers_every_try_and_is_recorded(pipe, committee, tmp_path):
    """Selection with feedback-guided tries: the kept image of each row is the feedback-guided image
    of its try's seed; generation.json records the feedback; edits refuse it."""
    from dacd.feedback import FeedbackGuidance
    from dacd.generation import Anchoring, assign_anchors

    fb = FeedbackGuidance(committee[0], scale=1.0, steps=2)
    sel = Selection(max_tries=2, tolerance=0.45, pilot=0)
    plan, summary = selected(pipe, committee, tmp_path / "fb", sel, feedback=fb, feedback_scorer="classifier")
    cfg = json.loads((tmp_path / "fb" / "generation.json").read_text())
    assert cfg["sampling_mode"] == "selected+feedback"
    assert cfg["feedback"] == {"scale": 1.0, "steps": 2, "scorer": "classifier"}
    m = load_manifest(tmp_path / "fb")
    row = m.iloc[0]
    kw = dict(output_type="np", num_inference_steps=2, scheduler="ddim", guidance_scale=2.0,
              difficulty_guidance_scale=3.0)
    gen = [torch.Generator().manual_seed(try_seed(int(row.seed), int(row.tries) - 1))]
    steered = pipe([int(row.label)], [float(row.requested_s)], generator=gen, feedback=fb, **kw).images[0, ..., 0]
    gen = [torch.Generator().manual_seed(try_seed(int(row.seed), int(row.tries) - 1))]
    plain = pipe([int(row.label)], [float(row.requested_s)], generator=gen, **kw).images[0, ..., 0]
    stored = read_png(tmp_path / "fb" / row.path)[0].astype(float)
    assert np.abs(np.rint(steered * 255) - stored).max() <= 1
    assert np.abs(np.rint(plain * 255) - stored).max() > 1  # feedback changed the image
    anchored = assign_anchors(make_plan(CLASSES, 1, seed=4), ["a0", "a1", "a2", "a3"], [0, 1, 2, 3])
    with pytest.raises(GenerationError, match="feedback"):
        generate_dataset(pipe, anchored, tmp_path / "edits", model_id="tiny", sampling=FAST, progress=False,
                         anchoring=Anchoring(0.5), anchors={f"a{i}": np.zeros((1, 32, 32), np.uint8) for i in range(4)},
                         feedback=fb)


# ---------------------------------------------------------------- pooled selection

def pooled(pipe, committee, tmp_path, name, pooling, plan=None, pool_plan=None, pool="pool", **kw):
    plan = make_plan(CLASSES, 3, seed=4) if plan is None else plan
    pool_plan = make_pool_plan(plan, CLASSES, pooling.factor, seed=4) if pool_plan is None else pool_plan
    return plan, generate_pooled_set(pipe, plan, tmp_path / name, pool_plan=pool_plan, pool_dir=tmp_path / pool,
                                     committee=committee, committee_key="test", pooling=pooling, model_id="tiny",
                                     sampling=kw.pop("sampling", FAST), batch_size=4, progress=False, **kw)


def test_pooled_rows_take_the_nearest_faithful_pool_images(pipe, committee, tmp_path):
    pooling = Pooling(factor=4, tolerance=0.1)
    plan, summary = pooled(pipe, committee, tmp_path, "set", pooling)
    m, pool = load_manifest(tmp_path / "set"), load_manifest(tmp_path / "pool")
    assert summary["complete"] and list(m.id) == list(plan.id) and len(pool) == 4 * len(plan)
    assert pool.requested_s.between(0, 1).all() and pool.requested_s.std() > 0.15  # s ~ U(0, 1)
    assert not m.pool_id.duplicated().any() and set(m.pool_id) <= set(pool.id)
    by_id = pool.set_index("id")
    for row in m.itertuples():  # each image is a byte copy of its pool image, of the row's class
        assert (tmp_path / "set" / row.path).read_bytes() == (tmp_path / "pool" / by_id.loc[row.pool_id, "path"]).read_bytes()
        assert by_id.loc[row.pool_id, "label"] == row.label
    imgs = np.stack([read_png(tmp_path / "set" / p) for p in m.path])
    s, faithful = committee_scores(committee, imgs, m.label.to_numpy())
    np.testing.assert_allclose(m.selection_s, s, atol=1e-6)
    assert (m.faithful == faithful).all()
    assert (m.accepted == ((np.abs(s - m.requested_s) <= 0.1) & faithful)).all()
    # label-faithful first: a class takes an unfaithful image only when its faithful ones are used up
    scored = pd.read_parquet(tmp_path / "pool" / "committee-test.parquet").merge(pool[["id", "label"]], on="id")
    for c, rows in m.groupby("label"):
        n_faithful = scored[(scored.label == c) & scored.faithful].shape[0]
        assert rows.faithful.sum() == min(n_faithful, len(rows))
    # the first row of a class gets the faithful pool image nearest its request
    first = m.sort_values("id").groupby("label").head(1)
    for row in first.itertuples():
        cand = scored[(scored.label == row.label) & (scored.faithful | ~scored[scored.label == row.label].faithful.any())]
        assert abs(row.selection_s - row.requested_s) <= np.abs(cand.selection_s - row.requested_s).min() + 1e-12
    assert CLASSES[0] in summary["acceptance_per_class"]


def test_pooled_sets_resume_share_a_pool_and_keep_a_prefix(pipe, committee, tmp_path):
    pooling = Pooling(factor=2, tolerance=0.1)
    big = make_plan(CLASSES, 4, seed=4)
    pool_plan = make_pool_plan(big, CLASSES, 2, seed=4)
    _, first = pooled(pipe, committee, tmp_path, "killed", pooling, plan=big, pool_plan=pool_plan,
                      stop_after_chunks=1)
    assert not first["complete"] and not (tmp_path / "killed" / "manifest.parquet").exists()
    pooled(pipe, committee, tmp_path, "killed", pooling, plan=big, pool_plan=pool_plan)
    pooled(pipe, committee, tmp_path, "one", pooling, plan=big, pool_plan=pool_plan, pool="pool-one")  # uninterrupted
    one = load_manifest(tmp_path / "one")
    pd.testing.assert_frame_equal(load_manifest(tmp_path / "killed"), one)
    for p in one.path:
        assert (tmp_path / "killed" / p).read_bytes() == (tmp_path / "one" / p).read_bytes()
    chunks = {p: p.stat().st_mtime_ns for p in (tmp_path / "pool").glob(".chunk-*")}
    pooled(pipe, committee, tmp_path, "again", pooling, plan=big, pool_plan=pool_plan)  # the pool is reused
    assert chunks == {p: p.stat().st_mtime_ns for p in (tmp_path / "pool").glob(".chunk-*")}
    again = load_manifest(tmp_path / "again")
    pd.testing.assert_frame_equal(again, one)
    small = make_plan(CLASSES, 2, seed=4)  # the first ids of each class take the same pool images
    pooled(pipe, committee, tmp_path, "small", pooling, plan=small, pool_plan=pool_plan)
    m_small = load_manifest(tmp_path / "small").set_index("id")
    assert (m_small.pool_id == again.set_index("id").loc[m_small.index, "pool_id"]).all()
    with pytest.raises(GenerationError, match="pooling"):  # other settings into the same folder: refused
        pooled(pipe, committee, tmp_path, "again", Pooling(factor=2, tolerance=0.2), plan=big, pool_plan=pool_plan)


def test_a_bigger_pool_takes_the_rows_it_shares_from_a_smaller_one(pipe, committee, tmp_path):
    """Donors: a 4x pool of a plan takes whole chunks of the rows its 2x pool holds (row k of a class
    is the same row at any pool size) as byte copies with their manifest rows, samples the rest, and
    equals a 4x pool sampled from scratch; a pool of other settings gives nothing."""
    plan = make_plan(CLASSES, 3, seed=4)
    pooled(pipe, committee, tmp_path, "small", Pooling(factor=2, tolerance=0.1), pool="pool2")
    with pytest.warns(UserWarning, match="nothing-here gives no image: it is not finished"):
        _, grown = pooled(pipe, committee, tmp_path, "grown", Pooling(factor=4, tolerance=0.1), plan=plan,
                          pool="pool4", pool_donors=[tmp_path / "pool2", tmp_path / "nothing-here"])
    # 12 rows per class in chunks of 4: the first chunk of each class (rows 0-3) is all in the 2x
    # pool (rows 0-5); the next one (rows 4-7) only in part, so it is sampled
    assert grown["complete"] and grown["pool_reused"] == 4 * len(CLASSES)
    donor, pool4 = load_manifest(tmp_path / "pool2").set_index("id"), load_manifest(tmp_path / "pool4").set_index("id")
    first = [f"{i.rsplit('-', 1)[0]}-{k:06d}" for i in donor.index[::6] for k in range(4)]
    pd.testing.assert_frame_equal(pool4.loc[first], donor.loc[first])
    for i in first:
        assert (tmp_path / "pool4" / pool4.loc[i, "path"]).read_bytes() == (tmp_path / "pool2" / donor.loc[i, "path"]).read_bytes()
    _, fresh = pooled(pipe, committee, tmp_path, "fresh", Pooling(factor=4, tolerance=0.1), plan=plan, pool="pool4b")
    assert fresh["pool_reused"] == 0
    scratch = load_manifest(tmp_path / "pool4b").set_index("id")
    pd.testing.assert_index_equal(scratch.index, pool4.index)
    for col in ("seed", "requested_s", "prompt", "label"):
        assert (scratch[col] == pool4[col]).all()
    for i in pool4.index:  # the same images, up to the float noise of other batches
        a = read_png(tmp_path / "pool4" / pool4.loc[i, "path"]).astype(int)
        b = read_png(tmp_path / "pool4b" / scratch.loc[i, "path"]).astype(int)
        assert np.abs(a - b).max() <= 2
    other = SamplingSettings(num_inference_steps=2, scheduler="ddim", guidance_scale=1.0, difficulty_guidance_scale=3.0)
    with pytest.warns(UserWarning, match=r"pool2 gives no image: it was made with other settings \(sampling\)"):
        _, none = pooled(pipe, committee, tmp_path, "other", Pooling(factor=4, tolerance=0.1), plan=plan,
                         pool="pool4c", pool_donors=[tmp_path / "pool2"], sampling=other)
    assert none["complete"] and none["pool_reused"] == 0
    # the donor had no evaluator; a grown pool with one measures the copied images too
    judge = committee[1]
    _, judged = pooled(pipe, committee, tmp_path, "judged", Pooling(factor=4, tolerance=0.1), plan=plan,
                       pool="pool4d", pool_donors=[tmp_path / "pool2"], evaluator=judge)
    assert judged["pool_reused"] == 4 * len(CLASSES) and donor.measured_s.isna().all()
    pool4d = load_manifest(tmp_path / "pool4d")
    assert pool4d.measured_s.notna().all()
    m = measure(judge, np.stack([read_png(tmp_path / "pool4d" / p) for p in pool4d.path]), pool4d.label.to_numpy())[0]
    np.testing.assert_allclose(pool4d.measured_s, m.measured_s, atol=1e-6)


def test_anchored_pool_keeps_faithful_edits_and_names_their_anchors(pipe, committee, tmp_path):
    """Sampling "anchored-pooled": the pool is made of edits of real images of each row's class; a
    kept image names its pool image's anchor; other anchors (or another strength) make another pool."""
    rng = np.random.default_rng(0)
    ids = np.array([f"train:{i}" for i in range(8)])
    labels = np.repeat(np.arange(len(CLASSES)), 2)
    images = rng.integers(0, 256, (8, 1, 32, 32), dtype=np.uint8)
    pooling = Pooling(factor=2, tolerance=0.1)
    plan = make_plan(CLASSES, 3, seed=4)
    pool_plan = assign_anchors(make_pool_plan(plan, CLASSES, 2, seed=4), ids, labels, seed=0)
    anchors = anchor_images(pool_plan, ids, images)
    assert set(anchors) == set(pool_plan.anchor_id)
    _, summary = pooled(pipe, committee, tmp_path, "set", pooling, plan=plan, pool_plan=pool_plan,
                        anchoring=Anchoring(0.6), anchors=anchors)
    m, pool = load_manifest(tmp_path / "set"), load_manifest(tmp_path / "pool").set_index("id")
    assert summary["complete"] and list(m.id) == list(plan.id)
    label_of = dict(zip(ids, labels))
    assert (pool.anchor_id.map(label_of) == pool.label).all()  # every edit is of its own class
    assert (m.anchor_id == pool.loc[m.pool_id, "anchor_id"].to_numpy()).all()
    cfg = json.loads((tmp_path / "set" / "generation.json").read_text())
    assert cfg["sampling_mode"] == "anchored-pooled" and cfg["pool"]["anchoring"] == {"strength": 0.6, "seed": 0}
    assert json.loads((tmp_path / "pool" / "generation.json").read_text())["sampling_mode"] == "anchored"
    # the anchor matters: the same pool plan on other real images gives other pool images
    other = {a: 255 - img for a, img in anchors.items()}
    pooled(pipe, committee, tmp_path, "other", pooling, plan=plan, pool_plan=pool_plan, pool="pool-other",
           anchoring=Anchoring(0.6), anchors=other)
    first = pool.path.iloc[0]
    assert (tmp_path / "pool" / first).read_bytes() != (tmp_path / "pool-other" / first).read_bytes()
    with pytest.raises(GenerationError, match=r"pool\.anchoring\.strength: 0\.6 in the folder, 0\.4 now"):
        pooled(pipe, committee, tmp_path, "set", pooling, plan=plan, pool_plan=pool_plan, pool="pool-0.4",
               anchoring=Anchoring(0.4), anchors=anchors)
    with pytest.raises(GenerationError, match="not among the real images"):
        anchor_images(pool_plan, ids[:4], images[:4])


def test_a_pool_at_the_plans_difficulty_serves_its_plan_and_records_its_draw(pipe, committee, tmp_path):
    spec = DifficultySpec(mu=0.8, sigma=0.05)
    plan = make_plan(CLASSES, 3, spec, seed=4)
    pool_plan = make_pool_plan(plan, CLASSES, 2, seed=4, difficulty=spec)
    # the plan's rows are each class's first pool rows: same ids, noise seeds and requests
    first = pool_plan.groupby("label").head(3).reset_index(drop=True)
    pd.testing.assert_frame_equal(first[["id", "seed", "requested_s"]], plan[["id", "seed", "requested_s"]])
    assert not np.allclose(make_pool_plan(plan, CLASSES, 2, seed=4).requested_s, pool_plan.requested_s)
    _, summary = pooled(pipe, committee, tmp_path, "set", Pooling(factor=2), plan=plan, pool_plan=pool_plan,
                        pool_difficulty=spec)
    assert summary["complete"]
    drawn = json.loads((tmp_path / "pool" / "generation.json").read_text())["difficulty"]
    assert drawn["mu"] == 0.8 and drawn["description"] == spec.describe()
    pooled(pipe, committee, tmp_path / "u", "set", Pooling(factor=2), plan=plan)
    assert json.loads((tmp_path / "u" / "pool" / "generation.json").read_text())["difficulty"] == {
        "kind": "uniform", "description": "s ~ U(0, 1)"}


def test_a_pool_steered_by_committee_feedback_records_it_and_moves_towards_its_requests(pipe, committee, tmp_path):
    from dacd.feedback import FeedbackGuidance

    spec = DifficultySpec(mu=0.5, sigma=0.1)
    plan = make_plan(CLASSES, 3, spec, seed=4)
    pool_plan = make_pool_plan(plan, CLASSES, 2, seed=4, difficulty=spec)
    fb = FeedbackGuidance(tuple(committee), scale=0.5, steps=2)
    _, steered = pooled(pipe, committee, tmp_path, "fb", Pooling(factor=2), plan=plan, pool_plan=pool_plan,
                        pool="pool-fb", feedback=fb, feedback_scorer="committee test")
    _, plain = pooled(pipe, committee, tmp_path, "plain", Pooling(factor=2), plan=plan, pool_plan=pool_plan)
    assert steered["complete"] and plain["complete"]
    cfg = json.loads((tmp_path / "fb" / "generation.json").read_text())
    assert cfg["sampling_mode"] == "pooled+feedback"
    assert cfg["pool"]["feedback"] == {"scale": 0.5, "steps": 2, "scorer": "committee test"}
    assert json.loads((tmp_path / "pool-fb" / "generation.json").read_text())["sampling_mode"] == "plain+feedback"
    assert "feedback" not in json.loads((tmp_path / "plain" / "generation.json").read_text())["pool"]

    def error(pool_dir):  # the committee's mean s against each pool image's own request
        m = load_manifest(pool_dir)
        s, _ = committee_scores(committee, load_generated_images(pool_dir, m), m.label.to_numpy())
        return np.abs(s - m.requested_s.to_numpy()).mean()

    assert error(tmp_path / "pool-fb") < error(tmp_path / "pool")
    with pytest.raises(GenerationError, match="feedback"):  # a plain pool's folder does not take steered images
        pooled(pipe, committee, tmp_path, "fb2", Pooling(factor=2), plan=plan, pool_plan=pool_plan, feedback=fb,
               feedback_scorer="committee test")


def test_pooled_refusals(pipe, committee, tmp_path):
    with pytest.raises(GenerationError, match="committee"):
        pooled(pipe, [], tmp_path, "x", Pooling(factor=2))
    with pytest.raises(GenerationError, match="pool factor"):
        Pooling(factor=0)
    plan = make_plan(CLASSES, 3, seed=4)
    with pytest.raises(GenerationError, match="fewer images"):
        pooled(pipe, committee, tmp_path, "y", Pooling(factor=2), plan=plan,
               pool_plan=make_plan(CLASSES, 2, seed=4))


def test_match_pool_prefers_faithful_then_the_least_confidently_wrong():
    """Pure matching: faithful images nearest the request; after them, unfaithful images from the
    lowest s up (not the nearest to a high request, which would be a confident other-class image)."""
    pool = pd.DataFrame({"id": [f"p{i}" for i in range(6)], "label": 0, "seed": range(6), "prompt": "x",
                         "selection_s": [0.2, 0.55, 0.9, 0.1, 0.95, 0.6],
                         "faithful": [True, True, False, False, False, True],
                         "measured_s": 0.0, "predicted_class": "a", "path": "x.png", "conditioning_s": 0.5})
    plan = pd.DataFrame({"id": [f"r{i}" for i in range(5)], "class": "a", "label": 0, "index": range(5),
                         "requested_s": [0.5, 0.9, 0.9, 0.9, 0.5], "seed": 0, "prompt": "x"})
    m = match_pool(pool, plan, Pooling(factor=1, tolerance=0.1))
    # r0 -> p1 (0.55, nearest faithful), r1 -> p5 (0.6), r2 -> p0 (last faithful), then unfaithful from
    # the lowest s: r3 -> p3 (0.1), r4 -> p2 (0.9)
    assert list(m.pool_id) == ["p1", "p5", "p0", "p3", "p2"]
    assert list(m.accepted) == [True, False, False, False, False]
    loose = match_pool(pool, plan, Pooling(factor=1, tolerance=0.1, label_rule=False))
    assert list(loose.pool_id[:3]) == ["p1", "p2", "p4"] and loose.accepted.iloc[1]  # nearest, faithful or not
    with pytest.raises(GenerationError, match="pool factor"):
        match_pool(pool.iloc[:3], plan, Pooling(factor=1))


def test_bench_pool_matches_a_plan_per_mu_and_counts_shared_images(pipe, committee, tmp_path):
    """bench/pool.py --mus: per mu, the set match_pool gives its plan, and how many images it shares
    with the first mu's set (the same plan twice: all of them)."""
    from pathlib import Path

    pooled(pipe, committee, tmp_path, "set", Pooling(factor=4, tolerance=0.1), evaluator=committee[1])
    bench = load_module(Path(__file__).parents[1] / "bench" / "pool.py")
    table = bench.plan_overlap(tmp_path / "pool", [0.5, 0.5, 0.9], per_class=3, sigma=0.1, tolerance=0.1)
    assert list(table["images"]) == [12, 12, 12] and list(table["shared with mu 0.5"][:2]) == [12, 12]
    plan = make_plan(CLASSES, 3, DifficultySpec(mu=0.9, sigma=0.1), seed=0)
    scored = load_manifest(tmp_path / "pool").drop(columns=["selection_s"]).merge(
        pd.read_parquet(tmp_path / "pool" / "committee-test.parquet"), on="id")
    ref = match_pool(scored, make_plan(CLASSES, 3, DifficultySpec(mu=0.5, sigma=0.1), seed=0), Pooling(factor=1))
    hard = match_pool(scored, plan, Pooling(factor=1))
    assert table["shared with mu 0.5"].iloc[2] == len(set(ref.pool_id) & set(hard.pool_id))
    assert table["accepted"].iloc[2] == round(float(hard.accepted.mean()), 4)
    # the judge's medium share of the faithful medium images, by hand
    _, _, per_class = bench.pool_table(tmp_path / "pool")
    for name, g in scored.groupby("class"):
        fm = g[g.faithful & g.selection_s.between(*MEDIUM_BAND) & g.measured_s.notna()]
        want = fm.measured_s.between(*MEDIUM_BAND).mean() if len(fm) else float("nan")
        got = per_class.loc[name, "faithful_medium_judged_medium"]
        assert (np.isnan(want) and np.isnan(got)) or got == round(float(want), 4)
    assert per_class.faithful_medium_judged_medium.notna().any()  # the pool's images were judged
    with pytest.raises(SystemExit, match="not a scored pool"):
        bench.pool_table(tmp_path / "set")
    with pytest.raises(SystemExit, match="fewer --per-class"):
        bench.plan_overlap(tmp_path / "pool", [0.5], per_class=100, sigma=0.1, tolerance=0.1)
    # a pool scored by two committees: read the named one's cache, refuse to guess between them
    cache = tmp_path / "pool" / "committee-test.parquet"
    (tmp_path / "pool" / "committee-other.parquet").write_bytes(cache.read_bytes())
    with pytest.raises(SystemExit, match="holds no scores of the committee"):
        bench.pool_table(tmp_path / "pool")
    folders = [tmp_path / f"member{i}" for i in range(len(committee))]
    for clf, folder in zip(committee, folders):
        clf.save_pretrained(folder)
    unfaithful = pd.read_parquet(cache).assign(faithful=False)
    unfaithful.to_parquet(tmp_path / "pool" / f"committee-{committee_key(folders)}.parquet")
    overall, _, _ = bench.pool_table(tmp_path / "pool", folders)
    assert overall.faithful.iloc[0] == 0  # the named committee's cache, not the other two
    with pytest.raises(SystemExit, match="holds no scores of the committee"):
        bench.pool_table(tmp_path / "pool", folders[:1])


def test_tiered_rule_tries_the_strict_committee_first_within_tolerance():
    """match_tiered: a row takes the strict committee's faithful image within the tolerance, else the
    lenient committee's, else the strict committee's nearest faithful image, else the lowest-s image
    left; without replacement, in plan order."""
    base = pd.DataFrame({"id": [f"p{i}" for i in range(5)], "label": 0})
    strict = base.assign(selection_s=[0.2, 0.45, 0.6, 0.9, 0.05], faithful=[True, False, False, False, True])
    lenient = base.assign(selection_s=[0.2, 0.5, 0.58, 0.9, 0.05], faithful=[True, True, True, False, True])
    plan = pd.DataFrame({"requested_s": [0.5, 0.55, 0.5, 0.5, 0.5], "label": 0})
    pick, tier = match_tiered([strict, lenient], plan, tolerance=0.1)
    # r0: nothing strict within 0.1 of 0.5 -> lenient p1 (0.5); r1: lenient p2 (0.58); r2: strict
    # nearest faithful p0 (0.2) before p4 (0.05); r3: strict p4; r4: none faithful left -> p3
    assert list(pick) == [1, 2, 0, 4, 3] and list(tier) == [1, 1, 0, 0, 0]
    assert list(match_tiered([strict], plan.iloc[:2], tolerance=0.5)[0]) == [0, 4]
    with pytest.raises(GenerationError, match="pool factor"):
        match_tiered([strict, lenient], pd.concat([plan, plan.iloc[:1]]), tolerance=0.1)
    # match_pool with the lenient committee as the looser one: the same picks, each with the s and
    # faithfulness of the committee whose rule took it
    full = plan.assign(id=[f"r{i}" for i in range(5)], **{"class": "a"}, index=range(5), seed=0, prompt="x")
    cols = {"prompt": "x", "measured_s": 0.0, "predicted_class": "a", "path": "x.png", "conditioning_s": 0.5,
            "seed": 0, "class": "a"}
    m = match_pool(strict.assign(**cols), full, Pooling(factor=1, tolerance=0.1), looser=[lenient.assign(**cols)])
    assert list(m.pool_id) == ["p1", "p2", "p0", "p4", "p3"] and list(m.tier) == [1, 1, 0, 0, 0]
    assert list(m.selection_s) == [0.5, 0.58, 0.2, 0.05, 0.9] and list(m.accepted) == [True, True, False, False, False]
    with pytest.raises(GenerationError, match="label rule"):
        match_pool(strict.assign(**cols), full, Pooling(factor=1, label_rule=False), looser=[lenient.assign(**cols)])
    with pytest.raises(GenerationError, match="order"):
        match_pool(strict.assign(**cols), full, Pooling(factor=1), looser=[lenient.assign(**cols).iloc[::-1]])


def test_a_looser_committee_equal_to_the_strict_one_changes_no_match():
    """The tiered rule over one committee twice is the plain label rule (`match_pool`'s own matching)."""
    rng = np.random.default_rng(0)
    n = 60
    pool = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "label": rng.integers(0, 3, n),
                         "selection_s": rng.uniform(0, 1, n), "faithful": rng.uniform(size=n) < 0.6,
                         "prompt": "x", "measured_s": 0.0, "predicted_class": "a", "path": "x.png",
                         "conditioning_s": 0.5, "seed": range(n), "class": "a"})
    plan = make_plan(["a", "b", "c"], 8, DifficultySpec(mu=0.5, sigma=0.2), seed=1)
    plain = match_pool(pool, plan, Pooling(factor=1, tolerance=0.1))
    tiered = match_pool(pool, plan, Pooling(factor=1, tolerance=0.1), looser=[pool])
    assert list(plain.pool_id) == list(tiered.pool_id) and (tiered.tier == 0).all()
    assert list(plain.accepted) == list(tiered.accepted) and "tier" not in plain


def test_pooled_set_with_a_looser_committee_records_it_and_takes_its_images(pipe, committee, tmp_path):
    """generate_pooled_set(looser=...): the pool is scored by each committee once, the set is the
    tiered match of the caches, its manifest has `tier`, and the looser committee is part of the
    set's identity (a folder made without it is refused), while a set without one is as before.
    The second committee here is one classifier whose head leans to Trouser: the rows of that class,
    which the strict committee never holds faithful, take its images (tier 1); T-shirt rows stay
    the strict committee's."""
    torch.manual_seed(2)
    trouser = build_classifier("resnet10t", in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()
    with torch.no_grad():
        trouser.model.get_classifier().weight.mul_(0.05)
        trouser.model.get_classifier().bias.copy_(torch.tensor([0.0, 1.1, 0.0, 0.0]))
    pooling = Pooling(factor=4, tolerance=0.1)
    plan, _ = pooled(pipe, committee, tmp_path, "plain", pooling)
    plan, summary = pooled(pipe, committee, tmp_path, "tiered", pooling, looser=[([trouser], "loose")])
    assert summary["complete"]
    manifest = load_manifest(tmp_path / "pool")
    s1, f1 = committee_scores([trouser], load_generated_images(tmp_path / "pool", manifest), manifest.label.to_numpy())
    strict = pd.read_parquet(tmp_path / "pool" / "committee-test.parquet")
    loose = pd.read_parquet(tmp_path / "pool" / "committee-loose.parquet")
    np.testing.assert_allclose(loose.selection_s, s1, atol=1e-6)
    assert (loose.faithful == f1).all() and f1[manifest.label == 1].all() and not strict.faithful[manifest.label == 1].any()
    pool = manifest.drop(columns=["selection_s"])
    want = match_pool(pool.merge(strict, on="id"), plan, pooling, looser=[pool.merge(loose, on="id")])
    m = load_manifest(tmp_path / "tiered")
    assert list(m.pool_id) == list(want.pool_id) and list(m.tier) == list(want.tier)
    assert list(m.accepted) == list(want.accepted) and "tier" not in load_manifest(tmp_path / "plain")
    assert (m.tier[m.label == 1] == 1).all() and m.faithful[m.label == 1].all()
    assert (m.tier[m.label == 0] == 0).all() and m.faithful[m.label == 0].all()
    np.testing.assert_allclose(m.selection_s[m.label == 1],
                               loose.set_index("id").loc[m.pool_id[m.label == 1], "selection_s"], atol=1e-9)
    plain = load_manifest(tmp_path / "plain")
    assert not plain.faithful[plain.label == 1].any()  # without it, Trouser rows take unfaithful images
    cfg = json.loads((tmp_path / "tiered" / "generation.json").read_text())
    assert cfg["pool"]["looser_committees"] == ["loose"]
    assert "looser_committees" not in json.loads((tmp_path / "plain" / "generation.json").read_text())["pool"]
    with pytest.raises(GenerationError, match="other settings"):
        pooled(pipe, committee, tmp_path, "tiered", pooling)
    with pytest.raises(GenerationError, match="label rule"):
        pooled(pipe, committee, tmp_path, "x", Pooling(factor=4, label_rule=False), looser=[([trouser], "loose")])


def test_bench_pool_rule_frontier_judges_each_rules_set_with_the_evaluator(pipe, committee, tmp_path):
    """bench/pool.py --rules: per label rule, the evaluator's medium share and accuracy of the set that
    rule matches, computed from the pool images the rule takes."""
    from pathlib import Path

    pooled(pipe, committee, tmp_path, "set", Pooling(factor=4, tolerance=0.1))
    bench = load_module(Path(__file__).parents[1] / "bench" / "pool.py")
    folders = [tmp_path / f"member{i}" for i in range(len(committee))]
    for clf, folder in zip(committee, folders):
        clf.save_pretrained(folder)
    cache = pd.read_parquet(tmp_path / "pool" / "committee-test.parquet")
    cache.to_parquet(tmp_path / "pool" / f"committee-{committee_key(folders[:1])}.parquet")
    strict = cache.assign(faithful=cache.faithful & (cache.index % 2 == 0))  # a stricter rule: half of them
    strict.to_parquet(tmp_path / "pool" / f"committee-{committee_key(folders)}.parquet")
    table = bench.rule_frontier(tmp_path / "pool", [folders[:1], folders], mu=0.5, per_class=3, sigma=0.1,
                                tolerance=0.1, ceiling=0.5)
    assert list(table.rule) == ["1 member", "2 members", "tiered 2 > 1 members, tolerance 0.1"]
    pool = load_manifest(tmp_path / "pool").drop(columns=["selection_s"]).merge(strict, on="id")
    plan = make_plan(CLASSES, 3, DifficultySpec(mu=0.5, sigma=0.1), seed=0)
    took = pool.set_index("id").loc[match_pool(pool, plan, Pooling(factor=1)).pool_id]
    row = table.iloc[1]
    assert row.images == 12
    assert row.medium_band_share == round(float(took.measured_s.between(0.3, 0.7).mean()), 4)
    assert row.x_ceiling == round(row.medium_band_share / 0.5, 3)
    assert row.evaluator_accuracy == round(float((took.predicted_class == took["class"]).mean()), 4)
    with pytest.raises(SystemExit, match="holds no scores"):
        bench.rule_frontier(tmp_path / "pool", [folders[1:]], mu=0.5, per_class=3, sigma=0.1, tolerance=0.1)


def test_a_calibrated_set_records_its_curve_and_is_not_resumed_through_another(tmp_path):
    """generation.json of a calibrated set names the curve (content hash, who measured it) and the
    settings it was not fitted at; a refitted curve is another set (resume refused); an uncalibrated
    set records none."""
    from dataclasses import replace

    from dacd.calibration import Calibration, CalibrationSettingsWarning

    pipe = dummy_pipeline()
    pipe.calibration = Calibration([0.0, 1.0], {str(c): [0.1, 0.9] for c in range(len(CLASSES))},
                                   {"measured_by": "test", "steps": 15})
    plan = make_plan(CLASSES, 2, seed=4)
    calibrated = replace(FAST, calibrated=True)
    kw = dict(model_id="tiny", batch_size=4, progress=False)
    with pytest.warns(CalibrationSettingsWarning):
        generate_dataset(pipe, plan, tmp_path / "set", sampling=calibrated, stop_after_chunks=1, **kw)
    record = json.loads((tmp_path / "set" / "generation.json").read_text())["calibration"]
    assert record["measured_by"] == "test" and record["differences"] == ["steps 2 (curve: 15)"]
    pipe.calibration = Calibration([0.0, 1.0], {str(c): [0.2, 0.9] for c in range(len(CLASSES))},
                                   {"measured_by": "test", "steps": 15})
    with pytest.raises(GenerationError, match="calibration.fingerprint"):
        generate_dataset(pipe, plan, tmp_path / "set", sampling=calibrated, **kw)
    cfg = json.loads((tmp_path / "set" / "generation.json").read_text())
    del cfg["calibration"]  # a set written before curves were recorded: resumed, with a warning
    (tmp_path / "set" / "generation.json").write_text(json.dumps(cfg))
    with pytest.warns(CalibrationSettingsWarning), pytest.warns(UserWarning, match="before sets recorded their"):
        assert generate_dataset(pipe, plan, tmp_path / "set", sampling=calibrated, **kw)["complete"]
    generate_dataset(pipe, plan, tmp_path / "plain", sampling=FAST, **kw)
    assert "calibration" not in json.loads((tmp_path / "plain" / "generation.json").read_text())
