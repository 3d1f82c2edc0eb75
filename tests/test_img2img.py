"""Difficulty edits of real images: DifficultyControlledImg2ImgPipeline and image preparation."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import CLASSES, dummy_pipeline

from dacd.calibration import Calibration, img2img_calibration_name, load_img2img_calibrations
from dacd.img2img import MAX_IMAGE_BYTES, DifficultyControlledImg2ImgPipeline, load_image, prepare_image
from dacd.pipeline import DifficultyControlledPipeline


@pytest.fixture(scope="module")
def edit():
    return DifficultyControlledImg2ImgPipeline.from_pipe(dummy_pipeline())


def item(seed=0, size=32):
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), np.uint8)
    a[6:26, 8:24] = rng.integers(80, 255, (20, 16))
    return a


def run(edit, image="item", labels=(0, 1), s=(0.2, 0.8), seed=0, **kw):
    kw.setdefault("num_inference_steps", 10)
    kw.setdefault("output_type", "np")
    kw.setdefault("scheduler", "ddim")
    return edit(list(labels), list(s), image=item() if isinstance(image, str) and image == "item" else image,
                generator=torch.Generator().manual_seed(seed), **kw)


def test_prepare_image_greyscale_resize_and_pad():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    out = prepare_image(Image.fromarray(rgb), 32, 1)
    assert out.shape == (1, 32, 32) and out.dtype == np.float32
    # aspect kept: 20 wide -> 32 wide, 10 high -> 16 high, centred; the rest is the border's value
    np.testing.assert_allclose(out[0, 8:24], 0.299, atol=1e-3)
    np.testing.assert_allclose(out[0, :8], 0.299, atol=1e-3)  # background = median of the border pixels
    dark = np.zeros((20, 10), np.uint8)
    dark[5:15, 3:7] = 200
    out = prepare_image(dark, 32, 1)
    assert out[0, :, :8].max() == 0 and out[0, :, 24:].max() == 0 and out.max() > 0.5
    # the same image as uint8 array, float array, tensor and PIL gives the same result
    a = item()
    ref = prepare_image(a, 32, 1)
    for other in (a.astype(np.float32) / 255, torch.from_numpy(a).float()[None] / 255, Image.fromarray(a)):
        np.testing.assert_allclose(prepare_image(other, 32, 1), ref, atol=1e-6)
    assert prepare_image(a, 32, 3).shape == (3, 32, 32)
    deep = Image.fromarray((a.astype(np.uint16) * 257), "I;16")  # 16-bit: the same picture, not clipped white
    np.testing.assert_allclose(prepare_image(deep, 32, 1), ref, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 2)), "channels"),
    (np.full((8, 8), np.nan), "NaN"),
    (np.full((8, 8), 3.0), r"\[0, 1\]"),
    ("not an image", "does not exist"),
    (12, "must be a PIL image"),
])
def test_prepare_image_refuses_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        prepare_image(bad, 32, 1)


def test_load_image_refuses_big_and_unreadable_files(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ValueError, match="limit is 10 MB"):
        load_image(big)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot be read as an image"):
        load_image(text)
    ok = tmp_path / "ok.png"
    Image.fromarray(item()).save(ok)
    assert load_image(ok).size == (32, 32)


@pytest.mark.parametrize("kwargs, match", [
    ({"image": None}, "image is missing"),
    ({"image": [item(), item(), item()]}, "3 entries for 2 edits"),
    ({"strength": 0.0}, r"strength must be a number in \(0, 1\]"),
    ({"strength": 1.5}, "strength"),
    ({"strength": float("nan")}, "strength"),
    ({"strength": 0.05, "num_inference_steps": 10}, "strength x num_inference_steps"),
    ({"labels": (0, 9)}, "class_labels"),
    ({"s": (0.2, 1.3)}, "difficulty"),
    ({"calibrated": True}, "curve fitted for img2img at strength 0.5"),
    ({"image": np.zeros((3, 3, 2))}, "image: .*channels"),
])
def test_bad_inputs_name_the_argument(edit, kwargs, match):
    kw = {"image": item(), "strength": 0.5, **kwargs}
    image = kw.pop("image")
    with pytest.raises(ValueError, match=match):
        run(edit, image=image, **kw) if image is not None else edit([0, 1], [0.2, 0.8], image=None)


def test_deterministic_and_low_strength_stays_closer_to_the_source(edit):
    a = run(edit, strength=0.5).images
    b = run(edit, strength=0.5).images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(edit, strength=0.5, seed=1).images)
    sources = [item(k) for k in range(4)]
    init = edit.encode_images(edit.check_image_inputs(sources, 4, 0.5, 10), 4)
    dist = {}
    for strength in (0.2, 0.5, 1.0):
        lat = edit([0, 1, 2, 3], 0.5, image=sources, strength=strength, num_inference_steps=10, scheduler="ddim",
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
        dist[strength] = float((lat - init).pow(2).mean())
    assert dist[0.2] < dist[0.5] < dist[1.0]


def test_edits_take_the_guidance_shaping(edit):
    kw = dict(strength=0.8, guidance_scale=4.0, difficulty_guidance_scale=6.0)
    plain = run(edit, **kw).images
    np.testing.assert_allclose(run(edit, guidance_interval=(0.0, float("inf")), **kw).images, plain, atol=1e-6)
    unguided = run(edit, strength=0.8, guidance_scale=1.0, difficulty_guidance_scale=1.0).images
    np.testing.assert_allclose(run(edit, guidance_interval=(1e6, 1e7), **kw).images, unguided, atol=1e-5)
    assert np.abs(run(edit, guidance_rescale=0.7, **kw).images - plain).max() > 1e-4
    with pytest.raises(ValueError, match="guidance_rescale"):
        run(edit, guidance_rescale=-0.1, **kw)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler"])
def test_every_scheduler_starts_at_the_strengths_timestep_from_the_noised_image(edit, scheduler):
    """The U-Net's first call sees the image noised to the first rerun timestep, and the loop runs
    exactly int(steps x strength) steps (a spy on the real U-Net, not a stand-in)."""
    seen = []
    hook = edit.unet.register_forward_pre_hook(lambda m, args, kw: seen.append((args[0].clone(), args[1])),
                                               with_kwargs=True)
    try:
        out = run(edit, labels=(0,), s=(0.5,), scheduler=scheduler, strength=0.6, guidance_scale=1.0,
                  difficulty_guidance_scale=1.0)
    finally:
        hook.remove()
    assert out.images.shape == (1, 32, 32, 1) and np.isfinite(out.images).all()
    sched = edit.get_scheduler(scheduler)
    sched.set_timesteps(10)
    start = (10 - 6) * sched.order
    assert len(seen) == len(sched.timesteps[start:]) and float(seen[0][1]) == float(sched.timesteps[start])
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    init = edit.encode_images(edit.check_image_inputs(item(), 1, 0.6, 10), 1)
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(0))
    expected = sched.scale_model_input(sched.add_noise(init, noise, sched.timesteps[start:start + 1]),
                                       sched.timesteps[start])
    torch.testing.assert_close(seen[0][0], expected, rtol=1e-4, atol=1e-5)


def test_from_pipe_carries_names_template_and_curves():
    pipe = dummy_pipeline()
    pipe.prompt_template = "a picture of a {}"
    rows = [{"label": c, "requested_s": r, "measured_s": 0.5 * r} for c in range(len(CLASSES)) for r in (0.0, 1.0)]
    import pandas as pd

    pipe.calibration = Calibration.fit(pd.DataFrame(rows))
    pipe.img2img_calibrations = {0.5: Calibration.fit(pd.DataFrame(rows), meta={"img2img_strength": 0.5})}
    edit = DifficultyControlledImg2ImgPipeline.from_pipe(pipe)
    assert edit.class_names == CLASSES and edit.prompt_template == "a picture of a {}"
    assert edit.calibration is pipe.calibration and 0.5 in edit.img2img_calibrations
    assert edit.unet is pipe.unet and edit.difficulty_encoder is pipe.difficulty_encoder  # no new weights
    out = run(edit, calibrated=True, strength=0.5, s=(0.2, 0.4))
    assert out.conditioning_difficulties == pytest.approx([0.4, 0.8])
    with pytest.raises(ValueError, match=r"strengths \[0.5\]"):
        run(edit, calibrated=True, strength=0.7)
    pipe.set_progress_bar_config(disable=True)
    assert DifficultyControlledImg2ImgPipeline.from_pipe(pipe)._progress_bar_config == {"disable": True}
    back = DifficultyControlledPipeline.from_pipe(edit)
    half = dummy_pipeline().to(dtype=torch.bfloat16)  # the weights are shared: from_pipe must not recast them
    DifficultyControlledImg2ImgPipeline.from_pipe(half)
    assert half.unet.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    assert type(back) is DifficultyControlledPipeline and back.class_names == CLASSES


def test_img2img_curves_load_from_a_folder(tmp_path):
    rows = [{"label": 0, "requested_s": r, "measured_s": r} for r in (0.0, 1.0)]
    import pandas as pd

    Calibration.fit(pd.DataFrame(rows), meta={"img2img_strength": 0.3}).save(tmp_path, img2img_calibration_name(0.3))
    assert img2img_calibration_name(0.3) == "calibration-img2img-strength0.3.json"
    assert list(load_img2img_calibrations(tmp_path)) == [0.3]
    Calibration.fit(pd.DataFrame(rows)).save(tmp_path, img2img_calibration_name(0.6))  # no strength in meta
    with pytest.raises(ValueError, match="img2img_strength"):
        load_img2img_calibrations(tmp_path)


@pytest.mark.slow
def test_edits_bench_on_tiny_models(tiny_checkpoint, fake_fmnist, tmp_path):
    from conftest import run_script
    import pandas as pd

    run_script("bench/edits.py", "--model", tiny_checkpoint / "dacd", "--evaluator", tiny_checkpoint / "evaluator",
               "--scores", tiny_checkpoint / "scores.parquet", "--data-dir", fake_fmnist, "--items", "2",
               "--strengths", "0.4", "0.45", "1.0", "--steps", "5", "--out", tmp_path, "--no-progress")
    table = pd.read_csv(tmp_path / "summary.csv").set_index("source")
    # 0.45 reruns the same 2 of 5 steps as 0.4: skipped
    assert list(table.index) == ["edit strength 0.4", "edit strength 1", "real ceiling", "sources (unedited)"]
    assert table.loc["edit strength 0.4", "steps_rerun"] == "2/5"
    edits = table.loc[["edit strength 0.4", "edit strength 1"]]
    assert edits["keep_label_at_s_le_0.5"].between(0, 1).all() and edits.ssim_to_source.between(-1, 1).all()
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells[cells.source == "edit strength 0.4"]) == 10 * 5  # every class x level
    assert (tmp_path / "edits_s0.4.png").is_file() and "real ceiling" in (tmp_path / "edits.md").read_text()
