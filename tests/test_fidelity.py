"""The fidelity measures of the base-generator comparison: SSIM, manifold metrics, min-SNR
weights, a 16x16-latent base, bench/fidelity.py end to end on tiny models, and bench/kid_means.py."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_module, run_script

from dacd.evaluation import manifold_metrics, ssim
from dacd.tiny import TinySDConfig, build_scheduler
from dacd.training import min_snr_weights

ROOT = Path(__file__).resolve().parents[1]


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    rng = np.random.default_rng(0)
    a = rng.random((3, 1, 28, 28))
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    light = ssim(a, np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1))
    heavy = ssim(a, np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1))
    assert np.all(light < 1) and np.all(heavy < light)
    # a constant shift keeps the structure terms at 1; only luminance drops (and by the textbook amount)
    flat = np.full((1, 1, 16, 16), 0.2)
    mu_a, mu_b, c1 = 0.2, 0.6, 0.01 ** 2
    assert ssim(flat, flat + 0.4)[0] == pytest.approx((2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1))
    with pytest.raises(ValueError, match="same shape|one shape"):
        ssim(a, a[:2])


def test_manifold_metrics_separate_fidelity_from_diversity():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 4))
    same = manifold_metrics(real, rng.normal(size=(400, 4)))
    assert same["precision"] > 0.9 and same["recall"] > 0.9 and 0.7 < same["density"] < 1.3 and same["coverage"] > 0.9
    # mode collapse: every generated row near the centre -> precise, but little recall and coverage
    collapsed = manifold_metrics(real, rng.normal(scale=0.05, size=(400, 4)))
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2 and collapsed["coverage"] < 0.3
    # far away: neither
    far = manifold_metrics(real, rng.normal(size=(400, 4)) + 20)
    assert far["precision"] == 0 and far["recall"] == 0 and far["coverage"] == 0
    with pytest.raises(ValueError, match="more than k"):
        manifold_metrics(real[:3], real)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_weights(kind):
    sched = build_scheduler(TinySDConfig(prediction_type=kind))
    t = torch.arange(0, 1000, 37)
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = min_snr_weights(sched, t, 5.0)
    # both targets weight the x0 error by min(SNR, gamma): eps error = SNR * x0 error, v error = (SNR + 1) * x0 error
    scale = snr if kind == "epsilon" else snr + 1
    torch.testing.assert_close(w * scale, torch.clamp(snr, max=5.0))
    if kind == "epsilon":
        assert torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1)


@pytest.mark.slow
def test_candidate_bases_and_the_fidelity_bench(fake_fmnist, tiny_evaluator, tmp_path):
    """bench/base_candidates.py trains a 16x16-latent, min-SNR base (train/train_base.py flags) and
    measures it with bench/fidelity.py; a rerun reuses every cached piece."""
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = ["bench/base_candidates.py", "--only", "lat16-minsnr", "--vae-steps", "2", "--unet-steps", "2",
           "--work-dir", work, "--out", out, "--per-class", "8", "--cas-seeds", "0", "--cas-steps", "3",
           "--gen-steps", "2", "--data-dir", fake_fmnist, "--evaluator", tiny_evaluator, "--no-progress"]
    run_script(*cmd)
    base = work / "v2-u2" / "lat16-minsnr" / "base"
    vae = json.loads((base / "vae" / "config.json").read_text())
    unet = json.loads((base / "unet" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 2 and unet["sample_size"] == 16 and len(unet["block_out_channels"]) == 3
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["train_config"]["snr_gamma"] == 5 and 0 < metrics["vae_reconstruction_test"]["ssim"] <= 1
    cands = pd.read_csv(out / "candidates.csv").set_index("candidate")
    assert list(cands.index) == ["lat16-minsnr"] and cands.loc["lat16-minsnr", "latent"] == "4x16x16"

    table = pd.read_csv(out / "fidelity.csv")
    assert list(table.model) == ["real-random", "lat16-minsnr/base"]
    gen = table.set_index("model").loc["lat16-minsnr/base"]
    assert 0 <= gen.precision <= 1 and 0 <= gen.recall <= 1 and 0 < gen.vae_ssim <= 1 and gen.vae_psnr > 0
    assert 0 <= gen.cas_mean <= 1 and gen.cas_seeds == 1
    assert table.set_index("model").loc["real-random", "cas_gap_to_real"] == 0
    per_class = pd.read_csv(out / "per_class.csv")
    assert len(per_class) == 20 and per_class.kid.notna().all()
    assert "KID per class" in (out / "fidelity.md").read_text()
    images = next(work.glob("fidelity-cache/lat16-minsnr_base-*/images.npy"))
    gen_images = np.load(images)
    mine = per_class[per_class.model == "lat16-minsnr/base"]
    expected = (gen_images.reshape(10, 8, -1).astype(np.float64).mean(-1) / 255).std(1)  # 8 images per class
    np.testing.assert_allclose(mine.brightness_sd.to_numpy(), expected, rtol=1e-6)
    assert "mean brightness" in (out / "fidelity.md").read_text()
    stamp = images.stat().st_mtime_ns
    run_script(*cmd)
    assert images.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "fidelity.csv").drop(columns="seconds"),
                                  table.drop(columns="seconds"))


def test_fidelity_refuses_two_models_of_one_label_before_any_work(tmp_path):
    """Tables are keyed by parent/name: two folders of one label once crashed the run at its end,
    after every image was made. A link keeps its own name, so it tells them apart."""
    a, b = tmp_path / "a" / "ck" / "baseline", tmp_path / "b" / "ck" / "baseline"
    out = tmp_path / "out"
    proc = run_script("bench/fidelity.py", "--models", a, b, "--out", out, check=False, timeout=120)
    assert proc.returncode != 0 and "several --models have the table label ck/baseline" in proc.stderr
    assert not out.exists()  # refused before anything was written
    (tmp_path / "first-base").symlink_to(tmp_path / "b" / "ck", target_is_directory=True)
    proc = run_script("bench/fidelity.py", "--models", a, tmp_path / "first-base" / "baseline", "--out", out,
                      "--data-dir", tmp_path / "no-data", check=False, timeout=120)
    assert "several --models" not in proc.stderr  # labels differ: it goes on (and stops at the missing data)


def test_fidelity_labels_its_guidance_shaping():
    fidelity = load_module(ROOT / "bench" / "fidelity.py")
    from dacd.sampling import SamplingSettings

    args = fidelity.parse_args(["--guidance-interval", "0.28", "5.42", "--guidance-rescale", "0.7"])
    shaped = SamplingSettings(guidance_scale=2.0, guidance_interval=args.guidance_interval,
                              guidance_rescale=args.guidance_rescale)
    assert fidelity.shaping_label(shaped) == ", interval (0.28, 5.42], rescale 0.7"
    assert fidelity.shaping_label(SamplingSettings(guidance_scale=2.0)) == ""
    with pytest.raises(SystemExit):  # refused before any work
        fidelity.parse_args(["--guidance-interval", "5", "1"])


def test_kid_means_averages_draws_and_compares_each_class_with_the_reference(tmp_path, capsys):
    means = load_module(ROOT / "bench" / "kid_means.py")
    rows = {  # (model, class) -> KID in draw 0, draw 1
        ("a", "Bag"): (0.10, 0.20), ("a", "Coat"): (0.01, 0.03),
        ("ref", "Bag"): (0.05, 0.05), ("ref", "Coat"): (0.04, 0.04),
        ("real-random", "Bag"): (0.0, 0.0), ("real-random", "Coat"): (0.0, 0.0),
    }
    runs = []
    for d in (0, 1):
        run = tmp_path / f"seed{d}"
        run.mkdir()
        pd.DataFrame([{"class": c, "kid": v[d], "accuracy": 1.0, "model": m,
                       "brightness_sd": {"a": 0.1, "ref": 0.2, "real-random": 0.3}[m] * (d + 1)}
                      for (m, c), v in rows.items()]).to_csv(run / "per_class.csv", index=False)
        runs.append(str(run))
    means.main(["--runs", *runs, "--models", "a=model A", "--reference", "ref=the reference"])
    out = capsys.readouterr().out
    assert "draws seed0, seed1 | mean" in out
    assert "| Bag | 0.100, 0.200 | 0.150 | 0.050, 0.050 | 0.050 | **no** |" in out  # mean above the reference's
    assert "| Coat | 0.010, 0.030 | 0.020 | 0.040, 0.040 | 0.040 | yes |" in out
    assert "model A: below the reference in 1 of 2 classes" in out
    assert "model A 0.0850, the reference 0.0450" in out  # class means of the per-class means
    # brightness spread: model A, the reference, then the real images, each with its own values
    assert "| Bag | 0.1000, 0.2000 | 0.1500 | 0.2000, 0.4000 | 0.3000 | 0.3000, 0.6000 | 0.4500 |" in out
    for run in runs:  # runs from before bench/fidelity.py recorded brightness: KID alone
        pd.read_csv(f"{run}/per_class.csv").drop(columns="brightness_sd").to_csv(f"{run}/per_class.csv", index=False)
    means.main(["--runs", *runs, "--models", "a=model A", "--reference", "ref=the reference"])
    out = capsys.readouterr().out
    assert "model A: below the reference in 1 of 2 classes" in out and "brightness" not in out
    pd.read_csv(tmp_path / "seed0" / "per_class.csv").assign(brightness_sd=0.1).to_csv(
        tmp_path / "seed0" / "per_class.csv", index=False)
    with pytest.raises(SystemExit, match="only some --runs have the brightness_sd column"):
        means.main(["--runs", *runs, "--models", "a=model A", "--reference", "ref=the reference"])
    with pytest.raises(SystemExit, match="seed0/per_class.csv lacks b"):
        means.main(["--runs", *runs, "--models", "b", "--reference", "ref"])
    one = pd.read_csv(tmp_path / "seed1" / "per_class.csv")
    one[one.model != "a"].to_csv(tmp_path / "seed1" / "per_class.csv", index=False)  # a model missing from one draw
    with pytest.raises(SystemExit, match="seed1/per_class.csv lacks a"):
        means.main(["--runs", *runs, "--models", "a", "--reference", "ref"])
    with pytest.raises(SystemExit, match="is missing"):
        means.main(["--runs", str(tmp_path / "nowhere"), "--models", "a", "--reference", "ref"])
    # the reference read from other folders of the same draws
    other = []
    for d, kid in ((0, 0.5), (1, 0.7)):
        run = tmp_path / "plain" / f"seed{d}"
        run.mkdir(parents=True)
        pd.DataFrame([{"class": c, "kid": kid, "accuracy": 1.0, "model": m} for m in ("ref", "a", "real-random")
                      for c in ("Bag", "Coat")]).to_csv(run / "per_class.csv", index=False)
        other.append(str(run))
    for run in runs:  # runs that record brightness, a reference from runs that do not
        pd.DataFrame([{"class": c, "kid": v[int(run[-1])], "accuracy": 1.0, "model": m, "brightness_sd": 0.1}
                      for (m, c), v in rows.items() if m != "ref"]).to_csv(f"{run}/per_class.csv", index=False)
    means.main(["--runs", *runs, "--models", "a=model A", "--reference", "ref=plain", "--reference-runs", *other])
    out = capsys.readouterr().out
    assert "| Bag | 0.100, 0.200 | 0.150 | 0.500, 0.700 | 0.600 | yes |" in out  # a from runs, ref from other
    assert "plain: not recorded in its runs" in out and "| Bag | 0.1000, 0.1000 | 0.1000 | 0.1000, 0.1000 |" in out
    with pytest.raises(SystemExit, match="plain/seed0/per_class.csv lacks zzz"):
        means.main(["--runs", *runs, "--models", "a", "--reference", "zzz", "--reference-runs", *other])
    with pytest.raises(SystemExit, match="same draws"):
        means.main(["--runs", *runs, "--models", "a", "--reference", "ref", "--reference-runs", other[0]])


def test_vae_latents_reports_what_each_channel_carries(tiny_base, fake_fmnist, tmp_path):
    """bench/vae_latents.py: a channel the decoder ignores costs no PSNR; the spreads are the scaled
    posterior's own."""
    from diffusers import AutoencoderKL

    bench = load_module(ROOT / "bench" / "vae_latents.py")
    table = bench.main(["--base", str(tiny_base), "--data-dir", str(fake_fmnist), "--class", "Bag", "--n", "8",
                        "--out", str(tmp_path)])
    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae").eval()
    assert list(table.channel) == list(range(vae.config.latent_channels))
    assert "PSNR with every channel" in (tmp_path / "vae_latents.md").read_text()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 1, 32, 32), dtype=np.uint8))
    with torch.no_grad():
        vae.post_quant_conv.weight[:, 1] = 0.0  # the decoder no longer reads channel 1
        post = vae.encode(images.float() / 127.5 - 1).latent_dist
    table, full = bench.channel_report(vae, images)
    assert table.loc[1, "PSNR lost (dB)"] == pytest.approx(0.0, abs=1e-4) and np.isfinite(full)
    assert (table.drop(index=1)["PSNR lost (dB)"].abs() > 0).any()
    sf = vae.config.scaling_factor
    assert table.loc[0, "spread of means"] == pytest.approx(float(post.mean[:, 0].std()) * sf, rel=1e-5)
    assert table.loc[2, "posterior std"] == pytest.approx(float(post.std[:, 2].mean()) * sf, rel=1e-5)
    with pytest.raises(SystemExit, match="no images"):
        bench.main(["--base", str(tiny_base), "--data-dir", str(fake_fmnist), "--n", "0"])
