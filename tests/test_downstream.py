"""Downstream experiments: paired statistics on constructed data, the harness end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_module, run_script

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


def test_holm_adjustment():
    from dacd.evaluation import holm

    adj = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert adj[4] == pytest.approx(0.02) and adj[0] == pytest.approx(0.03)
    assert adj[2] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06) and np.isnan(adj[3])
    assert holm([0.9, 0.8])[0] == 1.0  # capped at 1


def test_match_to_plan_follows_the_plan_without_replacement():
    from dacd.evaluation import match_to_plan

    rng = np.random.default_rng(0)
    pool_labels = np.repeat([0, 1, 2], 200)
    pool_s = rng.beta(1, 2, len(pool_labels))  # skewed to easy, like out-of-fold s
    req_labels = np.repeat([0, 1, 2], 40)
    req_s = np.clip(rng.normal(0.5, 0.1, len(req_labels)), 0, 1)
    pick = match_to_plan(pool_s, pool_labels, req_s, req_labels)
    assert len(set(pick)) == len(pick)  # without replacement
    assert (pool_labels[pick] == req_labels).all()  # per class
    # nearest available: each request's gap is at most the gap to any image not taken before it
    taken = set()
    for w, i in enumerate(pick):
        free = [j for j in np.flatnonzero(pool_labels == req_labels[w]) if j not in taken]
        assert abs(pool_s[i] - req_s[w]) <= min(abs(pool_s[free] - req_s[w])) + 1e-12
        taken.add(i)
    assert abs(pool_s[pick].mean() - req_s.mean()) < 0.02  # the s values follow the plan
    # greedy in order: a prefix of the plan gets a prefix of the picks; deterministic
    first = np.concatenate([np.flatnonzero(req_labels == c)[:10] for c in range(3)])
    assert (match_to_plan(pool_s, pool_labels, req_s[first], req_labels[first]) == pick[first]).all()
    with pytest.raises(ValueError, match="only 200 in the pool"):
        match_to_plan(pool_s, pool_labels, np.full(201, 0.5), np.zeros(201, int))


def test_draw_per_class_counts_and_prefix():
    from dacd.evaluation import draw_per_class

    labels = np.repeat(np.arange(4), [50, 30, 20, 5])
    pick = draw_per_class(labels, {0: 10, 1: 6, 2: 4, 3: 8}, seed=3, cycle=True)
    assert np.bincount(labels[pick], minlength=4).tolist() == [10, 6, 4, 8]
    assert len(set(pick[labels[pick] == 0])) == 10 and len(set(pick[labels[pick] == 3])) == 5  # cycles when short
    small = draw_per_class(labels, {0: 4, 1: 2, 2: 1, 3: 1}, seed=3, cycle=True)
    assert (small[labels[small] == 0] == pick[labels[pick] == 0][:4]).all()
    with pytest.raises(ValueError, match="5 available"):
        draw_per_class(labels, {3: 8}, seed=3)


def test_downstream_cell_per_class_and_alone():
    from conftest import make_images

    from dacd.evaluation import train_downstream_cell

    labels = np.arange(60) % 10
    x = make_images(labels, 0, size=32)[:, None]
    kw = dict(arch="resnet10t", class_names=[str(i) for i in range(10)], steps=2, seed=0, batch_size=16)
    res = train_downstream_cell(x, labels, x[:20], labels[:20], x, labels, **kw)
    conf = np.asarray(res["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 60 and (conf.sum(1) == 6).all()
    assert np.allclose(res["per_class_accuracy"], conf.diagonal() / 6)
    assert res["accuracy"] == pytest.approx(conf.trace() / 60)
    assert (res["n_real"], res["n_synthetic"]) == (60, 20)
    alone = train_downstream_cell(x, labels, x[:20], labels[:20], x, labels, include_real=False, **kw)
    assert (alone["n_real"], alone["n_synthetic"]) == (0, 20)
    with pytest.raises(ValueError, match="needs added images"):
        train_downstream_cell(x, labels, None, None, x, labels, include_real=False, **kw)


RESULT_COLUMNS = ["cell", "model", "sampling", "mode", "mu", "ratio", "seeds", "accuracy_mean", "accuracy_std",
                  "paired_seeds", "diff_mean", "diff_ci_low", "diff_ci_high", "significant", "p_value", "p_holm",
                  "holm_significant", "n_real", "n_synthetic", "measured_medium_share", "evaluator_accuracy"]


@pytest.mark.slow
def test_downstream_quick_end_to_end(tiny_dacd, tiny_baseline, tiny_evaluator, tiny_scores, fake_fmnist, tmp_path):
    args = ["train/downstream.py", "--data-dir", fake_fmnist, "--model", tiny_dacd, "--baseline", tiny_baseline,
            "--evaluator", tiny_evaluator, "--scores", tiny_scores / "scores.parquet", "--real-fraction", "0.2",
            "--mus", "0.5", "0.9", "--ratios", "0.1", "0.25", "--seeds", "0", "1", "--headline-seeds", "0", "1", "2",
            "--steps", "3", "--batch-size", "16", "--gen-steps", "2", "--gen-batch-size", "8",
            "--samplings", "plain", "selected", "anchored", "pooled", "--strength", "0.6", "--max-tries", "2",
            "--pool-factor", "2",
            "--committee", tiny_scores / "classifier",
            "--work-dir", tmp_path / "work", "--out", tmp_path / "out", "--no-progress"]
    first = run_script(*args)
    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == RESULT_COLUMNS
    added = [f"{arm} mu={mu} r={r}" for r in ("0.1", "0.25") for mu in ("0.5", "0.9") for arm in ("dacd", "real-matched")]
    assert set(added) | {"baseline r=0.1", "real-random r=0.25", "real-duplicate r=0.1"} <= set(table.cell)
    assert [c for c in table.cell if c.startswith("alone")] == [
        "alone: dacd mu=0.5 r=0.25", "alone: dacd selected-c1 mu=0.5 r=0.25", "alone: dacd anchored mu=0.5 r=0.25",
        "alone: dacd pooled-c1 mu=0.5 r=0.25", "alone: baseline r=0.25",
        "alone: real-matched mu=0.5 r=0.25", "alone: real-random r=0.25"]
    # a committee other than the shipped pair (here one tiny classifier) is named by its size
    assert {"dacd selected-c1 mu=0.9 r=0.1", "dacd selected-c1 mu=0.5 r=0.25"} <= set(table.cell)
    assert table.set_index("cell").loc["dacd selected-c1 mu=0.5 r=0.25", "sampling"] == "selected-c1"
    assert table.set_index("cell").loc["dacd anchored mu=0.9 r=0.1", "sampling"] == "anchored"
    assert table.set_index("cell").loc["dacd pooled-c1 mu=0.9 r=0.25", "sampling"] == "pooled-c1"
    t = table.set_index("cell")
    assert t.loc["real-only", "n_real"] == 60 and t.loc["real-only", "n_synthetic"] == 0
    for arm in ("dacd mu=0.5", "real-matched mu=0.9", "real-random", "real-duplicate", "baseline"):
        assert t.loc[f"{arm} r=0.1", "n_synthetic"] == 10 and t.loc[f"{arm} r=0.25", "n_synthetic"] == 20
    assert t.loc["alone: real-random r=0.25", "n_real"] == 0 and t.loc["alone: real-random r=0.25", "n_synthetic"] == 20
    # headline cells run the headline seeds, the rest the first seeds
    assert t.loc["real-only", "seeds"] == 3 and t.loc["dacd mu=0.5 r=0.25", "seeds"] == 3
    assert t.loc["baseline r=0.1", "seeds"] == 3 and t.loc["dacd mu=0.9 r=0.25", "seeds"] == 2
    assert t.loc["real-random r=0.1", "seeds"] == 2
    assert (t.loc[t["mode"] == "added", "p_holm"] >= t.loc[t["mode"] == "added", "p_value"] - 1e-12).all()
    assert t.loc["real-only", "p_holm"] != t.loc["real-only", "p_holm"]  # NaN: not in the family
    assert set(t.loc[added, "sampling"].dropna()) == {"plain"}
    per_class = pd.read_csv(out / "per_class.csv")
    assert len(per_class) == 10 * len(table)
    runs = pd.read_csv(out / "runs.csv")
    assert (runs.steps == 3).all() and len(runs) == int(t.seeds.sum())
    sets = pd.read_csv(out / "sets.csv").set_index("set")
    assert (sets.images == 20).all()  # 6 real per class x 0.25, half up
    # real-matched follows the plan's s, real-random does not (the scoring s of the training split)
    assert abs(sets.loc["real-matched-mu0.9", "scoring_s_mean"] - sets.loc["real-matched-mu0.9", "requested_s_mean"]) \
        < abs(sets.loc["real-random", "scoring_s_mean"] - sets.loc["real-matched-mu0.9", "requested_s_mean"])
    matched = pd.read_csv(out / "matched.csv")
    assert set(matched["set"]) == {"real-matched-mu0.5", "real-matched-mu0.9"} and "gap_mean" in matched
    assert (out / "downstream.html").stat().st_size > 10_000
    md = (out / "results.md").read_text()
    assert "| baseline r=0.25 |" in md and "Per-class paired difference" in md
    # one generation per set; its folder name carries the set's identity
    folders = sorted(p.name for p in (tmp_path / "work" / "synthetic").iterdir())
    assert [f.rsplit("-", 1)[0] for f in folders] == ["baseline-plain", "dacd-anchored-mu0.5", "dacd-anchored-mu0.9",
                                                      "dacd-plain-mu0.5", "dacd-plain-mu0.9",
                                                      "dacd-pooled-c1-mu0.5", "dacd-pooled-c1-mu0.9",
                                                      "dacd-selected-c1-mu0.5", "dacd-selected-c1-mu0.9", "pool-dacd"]
    # both mus' pooled sets are matched from the one pool (2 x the set per class), without repeats
    pool = pd.read_parquet(next((tmp_path / "work" / "synthetic").glob("pool-dacd-*")) / "manifest.parquet")
    for mu in ("0.5", "0.9"):
        pm = pd.read_parquet(next((tmp_path / "work" / "synthetic").glob(f"dacd-pooled-c1-mu{mu}-*")) / "manifest.parquet")
        assert len(pool) == 2 * len(pm) and set(pm.pool_id) <= set(pool.id) and not pm.pool_id.duplicated().any()
        assert pm.selection_s.notna().all()
    anc = pd.read_parquet(next((tmp_path / "work" / "synthetic").glob("dacd-anchored-mu0.5-*")) / "manifest.parquet")
    from dacd.data import load_dataset, stratified_subset

    full = load_dataset("fashion-mnist", "train", fake_fmnist)
    subset_ids = set(np.asarray(full.ids)[stratified_subset(full.labels, 0.2, 0)])
    assert set(anc.anchor_id) <= subset_ids and anc.anchor_id.nunique() > 1
    cfg = json.loads(next((tmp_path / "work" / "synthetic").glob("dacd-anchored-mu0.5-*"))
                     .joinpath("generation.json").read_text())
    assert cfg["sampling_mode"] == "anchored" and cfg["anchoring"]["strength"] == 0.6
    sel = pd.read_parquet(next((tmp_path / "work" / "synthetic").glob("dacd-selected-c1-mu0.5-*")) / "manifest.parquet")
    assert sel.selection_s.notna().all() and sel.tries.between(1, 2).all()
    m = pd.read_parquet(next((tmp_path / "work" / "synthetic").glob("dacd-plain-mu0.9-*")) / "manifest.parquet")
    assert abs(m.requested_s.mean() - 0.9) < 0.1
    assert (m.real_subset == "fashion-mnist/train: stratified 0.2 (seed 0)").all()
    # cache keys differ between arms of the same ratio and seed
    keys = [p.name.rsplit("-", 1)[1] for p in (out / "cells").glob("*-seed0-*.json")]
    assert len(keys) == len(set(keys)) == len(table)
    # cached: a rerun trains nothing and writes the same table, also from the cache alone
    again = run_script(*args)
    assert "seed 0: accuracy" in first.stdout and "seed 0: accuracy" not in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)
    import shutil

    shutil.rmtree(tmp_path / "work")
    run_script(*args, "--cached-only")
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)


@pytest.mark.slow
def test_downstream_mu_pooled_sets_come_from_a_pool_drawn_at_their_mu(tiny_dacd, tiny_evaluator, tiny_scores,
                                                                      fake_fmnist, tmp_path):
    """--pool-difficulty plan end to end: each mu's pool is conditioned on its plan, says so in its
    generation.json, and serves only its own set (the other mu's pool, of the same kind, gives it no
    image: its requests differ row by row). A one-member committee names the sets 'mu-pooled-c1'."""
    done = run_script("train/downstream.py", "--data-dir", fake_fmnist, "--model", tiny_dacd, "--baseline", "",
               "--evaluator", tiny_evaluator, "--scores", tiny_scores / "scores.parquet", "--real-fraction", "0.2",
               "--arms", "dacd", "--mus", "0.3", "0.9", "--ratios", "0.25", "--seeds", "0", "--headline-seeds", "0",
               "--steps", "2", "--batch-size", "16", "--gen-steps", "2", "--gen-batch-size", "8",
               "--samplings", "pooled", "--pool-factor", "2", "--pool-difficulty", "plan",
               "--committee", tiny_scores / "classifier", "--work-dir", tmp_path / "work", "--out", tmp_path / "out",
               "--no-progress")
    t = pd.read_csv(tmp_path / "out" / "results.csv").set_index("cell")
    assert t.loc["dacd mu-pooled-c1 mu=0.9 r=0.25", "sampling"] == "mu-pooled-c1"
    assert "pool images taken from smaller pools" not in done.stdout
    synthetic = tmp_path / "work" / "synthetic"
    pools = sorted(synthetic.glob("pool-dacd-mu-*"))
    assert len(pools) == 2
    by_mu = {json.loads((p / "generation.json").read_text())["difficulty"]["mu"]: p for p in pools}
    assert sorted(by_mu) == [0.3, 0.9]
    for mu, pool_dir in by_mu.items():
        pool = pd.read_parquet(pool_dir / "manifest.parquet")
        assert abs(pool.requested_s.mean() - mu) < 0.1
        st = pd.read_parquet(next(synthetic.glob(f"dacd-mu-pooled-c1-mu{mu:g}-*")) / "manifest.parquet")
        assert set(st.pool_id) <= set(pool.id) and len(pool) == 2 * len(st)
    # the same pool steered by the committee's feedback: a pool of its own, which records it (gradients run
    # outside inference mode)
    run_script("train/downstream.py", "--data-dir", fake_fmnist, "--model", tiny_dacd, "--baseline", "",
               "--evaluator", tiny_evaluator, "--scores", tiny_scores / "scores.parquet", "--real-fraction", "0.2",
               "--arms", "dacd", "--mus", "0.3", "--ratios", "0.25", "--seeds", "0", "--headline-seeds", "0",
               "--steps", "2", "--batch-size", "16", "--gen-steps", "2", "--gen-batch-size", "8",
               "--samplings", "pooled", "--pool-factor", "2", "--pool-difficulty", "plan", "--feedback-scale", "0.5",
               "--feedback-steps", "1", "--committee", tiny_scores / "classifier", "--work-dir", tmp_path / "work",
               "--out", tmp_path / "out-fb", "--no-progress")
    steered = sorted(synthetic.glob("pool-dacd-mu-fb0.5-*"))
    assert len(steered) == 1 and steered[0] not in pools
    assert json.loads((steered[0] / "generation.json").read_text())["feedback"]["scale"] == 0.5
    t = pd.read_csv(tmp_path / "out-fb" / "results.csv").set_index("cell")
    assert t.loc["dacd mu-pooled-c1fb0.5 mu=0.3 r=0.25", "sampling"] == "mu-pooled-c1fb0.5"


def test_guidance_scales_make_their_own_sets_and_cells(tmp_path):
    """A text guidance other than the project's is a set of its own, named in its cells; the
    project's keeps today's names and identities (so cached cells stay valid)."""
    from pathlib import Path

    from dacd.data import ImageDataset

    ds = load_module(Path(__file__).parents[1] / "train" / "downstream.py")
    for name in ("dacd", "base"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(name.encode())
    names = [f"class {i}" for i in range(3)]
    real = ImageDataset(np.zeros((6, 1, 4, 4), np.uint8), np.repeat(np.arange(3), 2), np.array([f"r{i}" for i in range(6)]),
                        tuple(names), "train")
    counts = {c: 2 for c in range(3)}

    def planned(*scales, extra=()):
        args = ds.parse_args(["--model", str(tmp_path / "dacd"), "--baseline", str(tmp_path / "base"),
                              "--arms", "dacd", "baseline", "alone", "--mus", "0.5", "--ratios", "0.25",
                              "--guidance-scales", *map(str, scales), "--work-dir", str(tmp_path / "w"), *extra])
        sets = ds.plan_sets(args, real, counts)
        return sets, [c["cell"] for c in ds.cell_specs(args, sets)]

    default, cells = planned(ds.SAMPLING.guidance_scale)
    assert sorted(default) == ["baseline-plain", "dacd-plain-mu0.5"]
    assert cells == ["real-only", "dacd mu=0.5 r=0.25", "baseline r=0.25", "alone: dacd mu=0.5 r=0.25",
                     "alone: baseline r=0.25"]
    both, cells = planned(ds.SAMPLING.guidance_scale, 2)
    assert sorted(both) == ["baseline-plain", "baseline-plain-g2", "dacd-plain-g2-mu0.5", "dacd-plain-mu0.5"]
    assert {"dacd g2 mu=0.5 r=0.25", "baseline g2 r=0.25", "alone: baseline g2 r=0.25"} <= set(cells)
    for name, st in default.items():
        assert both[name]["identity"] == st["identity"]  # unchanged by adding a scale
    assert both["baseline-plain-g2"]["identity"] != both["baseline-plain"]["identity"]
    assert both["baseline-plain-g2"]["settings"].guidance_scale == 2.0
    assert both["dacd-plain-g2-mu0.5"]["sampling"] == "plain g2"
    # unguided dacd (text and difficulty guidance 1): named g1d1; the baseline has no difficulty branch
    unguided, cells = planned(1, extra=("--difficulty-guidance", "1"))
    assert sorted(unguided) == ["baseline-plain-g1", "dacd-plain-g1d1-mu0.5"]
    assert {"dacd g1d1 mu=0.5 r=0.25", "baseline g1 r=0.25", "alone: dacd g1d1 mu=0.5 r=0.25"} <= set(cells)
    dacd = unguided["dacd-plain-g1d1-mu0.5"]["settings"]
    assert (dacd.guidance_scale, dacd.difficulty_guidance_scale) == (1.0, 1.0)
    assert unguided["baseline-plain-g1"]["identity"] == planned(1)[0]["baseline-plain-g1"]["identity"]
    same, _ = planned(ds.SAMPLING.guidance_scale, extra=("--difficulty-guidance", str(ds.SAMPLING.difficulty_guidance_scale)))
    assert {k: v["identity"] for k, v in same.items()} == {k: v["identity"] for k, v in default.items()}


def test_pooled_sets_share_one_pool_or_have_one_per_mu(tmp_path, capsys):
    """Sampling "pooled": one pool per model and settings serves every mu (or, with
    --pool-difficulty plan, one per mu); the pool factor and the committee are part of each set's
    identity, and adding the sampling leaves the others' alone."""
    from pathlib import Path

    from dacd.data import ImageDataset

    ds = load_module(Path(__file__).parents[1] / "train" / "downstream.py")
    for name in ("dacd", "c1", "c2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(name.encode())
    names = [f"class {i}" for i in range(3)]
    real = ImageDataset(np.zeros((6, 1, 4, 4), np.uint8), np.repeat(np.arange(3), 2),
                        np.array([f"r{i}" for i in range(6)]), tuple(names), "train")
    counts = {c: 2 for c in range(3)}

    def planned(*extra):
        args = ds.parse_args(["--model", str(tmp_path / "dacd"), "--baseline", "", "--arms", "dacd", "alone",
                              "--mus", "0.5", "0.9", "--ratios", "0.25",  # the default --committee
                              "--work-dir", str(tmp_path / "w"), *extra])
        sets = ds.plan_sets(args, real, counts)
        return sets, [c["cell"] for c in ds.cell_specs(args, sets)]

    plain, _ = planned()
    sets, cells = planned("--samplings", "plain", "pooled", "--pool-factor", "3")
    assert {"dacd pooled mu=0.5 r=0.25", "dacd pooled mu=0.9 r=0.25", "alone: dacd pooled mu=0.5 r=0.25"} <= set(cells)
    a, b = sets["dacd-pooled-mu0.5"], sets["dacd-pooled-mu0.9"]
    assert a["pool"]["folder"] == b["pool"]["folder"] and a["pool"]["folder"].name.startswith("pool-dacd-")
    assert len(a["pool"]["plan"]) == 3 * len(a["plan"]) and a["identity"] != b["identity"]
    assert a["sampling"] == "pooled" and a["pooling"].factor == 3
    for name, st in plain.items():
        assert sets[name]["identity"] == st["identity"]
    bigger, _ = planned("--samplings", "pooled", "--pool-factor", "4")
    assert bigger["dacd-pooled-mu0.5"]["identity"] != a["identity"]
    assert bigger["dacd-pooled-mu0.5"]["pool"]["folder"] != a["pool"]["folder"]
    other, cells = planned("--samplings", "pooled", "--pool-factor", "3", "--committee", str(tmp_path / "c2"))
    assert "dacd-pooled-mu0.5" not in other  # another committee is named by its size beside the default's
    assert other["dacd-pooled-c1-mu0.5"]["identity"] != a["identity"] and "dacd pooled-c1 mu=0.5 r=0.25" in cells
    assert other["dacd-pooled-c1-mu0.5"]["pool"]["folder"] == a["pool"]["folder"]  # the same pool, rematched
    same, _ = planned("--samplings", "pooled", "--pool-factor", "3", "--committee", *ds.default_committee())
    assert same["dacd-pooled-mu0.5"]["identity"] == a["identity"]  # the default, spelled out: no tag
    # a pool steered by feedback: its own pool and name; the unsteered pooled sets keep theirs
    steered, cells = planned("--samplings", "pooled", "--pool-factor", "3", "--feedback-scale", "2")
    f = steered["dacd-pooled-fb2-mu0.5"]
    assert "dacd pooled-fb2 mu=0.5 r=0.25" in cells and "dacd-pooled-mu0.5" not in steered
    assert f["pool"]["folder"].name.startswith("pool-dacd-fb2-") and f["pool"]["folder"] != a["pool"]["folder"]
    assert f["feedback"]["scale"] == 2.0 and f["feedback"]["steps"] == 5 and f["identity"] != a["identity"]
    assert a["feedback"] is None
    with pytest.raises(SystemExit):  # feedback steers pools only
        planned("--feedback-scale", "2")
    # anchored-pooled: its own pool of edits, anchored on subset images of each row's class
    both, cells = planned("--samplings", "pooled", "anchored-pooled", "--pool-factor", "3", "--strength", "0.4")
    e = both["dacd-anchored-pooled-mu0.5"]
    assert both["dacd-pooled-mu0.5"]["identity"] == a["identity"]  # the pooled sets are unchanged by it
    assert e["pool"]["folder"].name.startswith("pool-dacd-anchored-") and e["pool"]["folder"] != a["pool"]["folder"]
    label_of = dict(zip(real.ids, real.labels))
    assert (e["pool"]["plan"].anchor_id.map(label_of) == e["pool"]["plan"].label).all()
    assert e["anchoring"].strength == 0.4 and e["sampling"] == "anchored-pooled"
    assert "dacd anchored-pooled mu=0.9 r=0.25" in cells and "alone: dacd anchored-pooled mu=0.5 r=0.25" in cells
    stronger, _ = planned("--samplings", "anchored-pooled", "--pool-factor", "3", "--strength", "0.6")
    assert stronger["dacd-anchored-pooled-mu0.5"]["identity"] != e["identity"]
    assert stronger["dacd-anchored-pooled-mu0.5"]["pool"]["folder"] != e["pool"]["folder"]
    # --pool-difficulty plan: a pool per mu, conditioned on that mu's plan; named mu-pooled
    per_mu, cells = planned("--samplings", "pooled", "--pool-factor", "3", "--pool-difficulty", "plan")
    c, d = per_mu["dacd-mu-pooled-mu0.5"], per_mu["dacd-mu-pooled-mu0.9"]
    assert "dacd mu-pooled mu=0.9 r=0.25" in cells and c["sampling"] == "mu-pooled"
    assert c["pool"]["folder"] != d["pool"]["folder"] and c["pool"]["folder"].name.startswith("pool-dacd-mu-")
    assert c["pool"]["folder"] != a["pool"]["folder"] and c["identity"] != a["identity"]
    for st, mu in ((c, 0.5), (d, 0.9)):
        drawn = st["pool"]["plan"].requested_s
        assert abs(drawn.mean() - mu) < 0.1 and drawn.std() < 0.2 and st["pool"]["difficulty"].mu == mu
    # the plan's rows are the pool's first rows of each class (same noise seed and request)
    first = c["pool"]["plan"].groupby("label").head(2).reset_index(drop=True)
    pd.testing.assert_frame_equal(first[["id", "seed", "requested_s"]], c["plan"][["id", "seed", "requested_s"]])
    assert a["pool"]["difficulty"] is None
    assert "alone: dacd mu-pooled mu=0.5 r=0.25" in cells
    three, cells = planned("--samplings", "pooled", "--pool-factor", "3", "--pool-difficulty", "plan",
                           "--committee", *ds.default_committee(), str(tmp_path / "c3"))
    t = three["dacd-mu-pooled-c3-mu0.5"]
    assert t["pool"]["folder"] == c["pool"]["folder"] and t["identity"] != c["identity"]  # same pool, rematched
    assert t["sampling"] == "mu-pooled-c3" and "dacd mu-pooled-c3 mu=0.9 r=0.25" in cells
    # a looser committee (the tiered label rule): the same pool, its own sets, named after both
    tiered, cells = planned("--samplings", "pooled", "--pool-factor", "3", "--pool-difficulty", "plan",
                            "--committee", *ds.default_committee(), str(tmp_path / "c3"),
                            "--looser-committee", *ds.default_committee())
    u = tiered["dacd-mu-pooled-c3t2-mu0.5"]
    assert u["pool"]["folder"] == c["pool"]["folder"] and u["identity"] not in (c["identity"], t["identity"])
    assert u["sampling"] == "mu-pooled-c3t2" and "dacd mu-pooled-c3t2 mu=0.9 r=0.25" in cells
    loose, _ = planned("--samplings", "pooled", "--pool-factor", "3", "--looser-committee", str(tmp_path / "c2"))
    assert loose["dacd-pooled-t1-mu0.5"]["identity"] != a["identity"]
    for bad, why in ((["--samplings", "plain", "--looser-committee", "x"], "add --samplings pooled"),
                     (["--samplings", "pooled", "--no-label-rule", "--looser-committee", "x"], "leave out"),
                     (["--samplings", "pooled", "--evaluator", "e", "--looser-committee", "e"], "must not select")):
        with pytest.raises(SystemExit):
            ds.parse_args(bad)
        assert why in capsys.readouterr().err
    # donors: a finished pool of the kind beside it, made by the same weights (its folder hash is
    # recomputed from its generation.json), not one of another model, kind or unfinished
    from dacd.generation import plan_fingerprint

    folder = d["pool"]["folder"]
    folder.mkdir(parents=True)
    (folder / "generation.json").write_text(json.dumps({"sampling": d["settings"].as_config(),
                                                        "plan_fingerprint": plan_fingerprint(d["pool"]["plan"])}))
    fp = ds.model_identity(tmp_path / "dacd")
    assert ds.pool_donors(c["pool"]["folder"], fp) == []  # not finished yet
    (folder / "manifest.parquet").write_bytes(b"")
    assert ds.pool_donors(c["pool"]["folder"], fp) == [folder]
    assert ds.pool_donors(c["pool"]["folder"], "another-model") == []
    assert ds.pool_donors(a["pool"]["folder"], fp) == []  # a uniform pool is another kind
    edits, cells = planned("--samplings", "anchored-pooled", "--pool-factor", "3", "--pool-difficulty", "plan")
    f = edits["dacd-anchored-mu-pooled-mu0.9"]
    assert f["pool"]["folder"].name.startswith("pool-dacd-anchored-mu-") and f["sampling"] == "anchored-mu-pooled"
    assert "dacd anchored-mu-pooled mu=0.5 r=0.25" in cells
    with pytest.raises(SystemExit):  # nothing pooled to draw
        ds.parse_args(["--samplings", "plain", "--pool-difficulty", "plan"])


def test_settings_json_records_repository_folders_relative():
    """settings.json names folders inside the repository relative to it, whether a setting holds a Path
    or a string (the --model and --committee defaults are strings), so committed results carry no
    machine paths; other values stay as they are."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    ds = load_module(root / "train" / "downstream.py")
    ck = root / "checkpoints" / "fashion-mnist"
    args = vars(ds.parse_args([]))
    recorded = {k: ds.recorded_setting(v) for k, v in args.items()}
    assert recorded["model"] == "checkpoints/fashion-mnist/dacd" and Path(args["model"]) == ck / "dacd"
    assert recorded["committee"] == ["checkpoints/fashion-mnist/classifier", "checkpoints/fashion-mnist/classifier-2"]
    assert recorded["data"] == "fashion-mnist" and recorded["arch"] == "resnet10t" and recorded["mus"] == args["mus"]
    assert ds.recorded_setting("") == "" and ds.recorded_setting(None) is None
    assert not any(str(root) in str(v) for v in recorded.values())


def test_set_identities_name_the_weights_not_the_calibration_curve(tmp_path):
    """A refitted calibration curve leaves a model's sets (and their cached cells) where they were;
    any other file of the folder moves them."""
    from pathlib import Path

    ds = load_module(Path(__file__).parents[1] / "train" / "downstream.py")
    (tmp_path / "dacd").mkdir()
    (tmp_path / "dacd" / "weights.bin").write_bytes(b"w")
    first = ds.model_identity(tmp_path / "dacd")
    (tmp_path / "dacd" / "calibration.json").write_text("{}")
    (tmp_path / "dacd" / "calibration-img2img-strength0.5.json").write_text("{}")
    assert ds.model_identity(tmp_path / "dacd") == first
    (tmp_path / "dacd" / "difficulty.json").write_text("{}")
    assert ds.model_identity(tmp_path / "dacd") != first
