import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from dacd.calibration import Calibration
from dacd.encoder import DifficultyEncoder
from dacd.pipeline import SCHEDULERS, DifficultyControlledPipeline
from dacd.tiny import TinySDConfig, build_components, save_sd_folder

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
TINY = TinySDConfig(vae_channels=(16, 32, 32), unet_channels=(32, 64), unet_top_attention=True, cross_attention_dim=32,
                    text_intermediate=64)


def dummy_pipeline(with_encoder=True, config=TINY):
    c = build_components(config, class_names=CLASSES, seed=0)
    enc = None
    if with_encoder:
        torch.manual_seed(1)
        enc = DifficultyEncoder(num_classes=len(CLASSES), cross_attention_dim=config.cross_attention_dim,
                                num_tokens=2, hidden_dim=64)
        with torch.no_grad():  # a visible null set, so that "null" and "real" tokens differ clearly
            enc.null_tokens.normal_()
    pipe = DifficultyControlledPipeline(**c, difficulty_encoder=enc, class_names=CLASSES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return dummy_pipeline()


def run(pipe, labels=(0, 1), s=(0.2, 0.8), seed=0, **kw):
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("output_type", "np")
    kw.setdefault("scheduler", "ddim")
    return pipe(list(labels), list(s), generator=torch.Generator().manual_seed(seed), **kw)


def test_output_types_and_metadata(pipe):
    out = run(pipe)
    assert out.images.shape == (2, 32, 32, 1) and out.images.dtype == np.float32
    assert out.class_labels == [0, 1] and out.difficulties == [0.2, 0.8]
    assert out.prompts == ["a photo of a T-shirt/top", "a photo of a Trouser"]
    pil = run(pipe, output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (32, 32) and pil[0].mode == "L"
    broadcast = pipe(2, 0.5, num_inference_steps=2, output_type="np")
    assert broadcast.images.shape[0] == 1 and broadcast.class_labels == [2]
    many = pipe(3, [0.1, 0.2, 0.3], num_inference_steps=2, output_type="np", scheduler="dpm++")
    assert many.class_labels == [3, 3, 3] and many.images.shape[0] == 3


def test_seed_reproduces_and_difficulty_changes_images(pipe):
    a, b = run(pipe).images, run(pipe).images
    np.testing.assert_array_equal(a, b)
    lo, hi = run(pipe, (2,), (0.1,)).images, run(pipe, (2,), (0.9,)).images
    assert np.abs(lo - hi).max() > 1e-4


def test_zero_difficulty_guidance_equals_stock_cfg_with_null_tokens(pipe):
    """g_d = 0 must equal ordinary CFG whose conditional branch carries the null tokens;
    checked against stock diffusers StableDiffusionPipeline fed those embeddings."""
    from diffusers import StableDiffusionPipeline

    ours = run(pipe, (1, 3), (0.3, 0.9), guidance_scale=4.0, difficulty_guidance_scale=0.0).images
    text = pipe.encode_prompt([pipe.class_prompt(1), pipe.class_prompt(3)])
    empty = pipe.encode_prompt(["", ""])
    null = pipe.difficulty_encoder.null(2)
    stock = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=pipe.get_scheduler("ddim"), safety_checker=None,
                                    feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    ref = stock(prompt_embeds=torch.cat([text, null], 1), negative_prompt_embeds=torch.cat([empty, null], 1),
                guidance_scale=4.0, num_inference_steps=3, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    with_d = run(pipe, (1, 3), (0.3, 0.9), guidance_scale=4.0, difficulty_guidance_scale=4.0).images
    assert np.abs(with_d - ours).max() > 1e-4  # and the difficulty term does something


def test_two_branch_shortcut_equals_three_branch_formula(pipe):
    two = run(pipe, guidance_scale=3.0, difficulty_guidance_scale=3.0).images
    three = run(pipe, guidance_scale=3.0, difficulty_guidance_scale=3.0, guidance_branches="three").images
    np.testing.assert_allclose(two, three, atol=1e-4)
    other = run(pipe, guidance_scale=3.0, difficulty_guidance_scale=6.0).images
    assert np.abs(other - two).max() > 1e-4


def test_guidance_interval_switches_guidance_off_outside_its_noise_levels(pipe):
    """(0, inf] covers every step: plain guidance; an interval above every step's noise level
    leaves the conditional prediction alone, which is guidance 1; one covering some steps is neither."""
    from dacd.pipeline import noise_level

    sched = pipe.get_scheduler("ddim")
    sched.set_timesteps(4)
    sigmas = sorted(noise_level(sched, t) for t in sched.timesteps)
    assert sigmas[0] < sigmas[-1]
    unguided = run(pipe, guidance_scale=1.0, difficulty_guidance_scale=1.0, num_inference_steps=4).images
    # two branches (equal scales: classic CFG, the baseline's path) and three (separate scales)
    for g_d, branches in ((4.0, "auto"), (4.0, "three"), (6.0, "auto")):
        kw = dict(guidance_scale=4.0, difficulty_guidance_scale=g_d, guidance_branches=branches,
                  num_inference_steps=4)
        plain = run(pipe, **kw).images
        np.testing.assert_allclose(run(pipe, guidance_interval=(0.0, math.inf), **kw).images, plain, atol=1e-6)
        off = run(pipe, guidance_interval=(1e6, 1e7), **kw).images
        np.testing.assert_allclose(off, unguided, atol=1e-5)
        middle = run(pipe, guidance_interval=(0.0, sigmas[-2]), **kw).images  # every step but the noisiest
        assert np.abs(middle - plain).max() > 1e-4 and np.abs(middle - unguided).max() > 1e-4


def test_guidance_rescale_matches_the_conditional_spread():
    from dacd.pipeline import rescaled

    g = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(3, 4, 8, 8, generator=g), 3 * torch.randn(3, 4, 8, 8, generator=g) + 1
    torch.testing.assert_close(rescaled(guided, cond, 0.0), guided)
    full = rescaled(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    torch.testing.assert_close(rescaled(guided, cond, 0.7), 0.7 * full + 0.3 * guided)


def test_guidance_rescale_changes_guided_images_only(pipe):
    for g_d in (4.0, 6.0):  # two branches, three branches
        kw = dict(guidance_scale=4.0, difficulty_guidance_scale=g_d)
        assert np.abs(run(pipe, guidance_rescale=0.7, **kw).images - run(pipe, **kw).images).max() > 1e-4
    one = dict(guidance_scale=1.0, difficulty_guidance_scale=1.0)  # nothing to rescale without guidance
    np.testing.assert_allclose(run(pipe, guidance_rescale=0.7, **one).images, run(pipe, **one).images, atol=1e-6)


def test_difficulty_only_and_prompts(pipe):
    out = run(pipe, difficulty_only=True)
    assert out.prompts == ["", ""] and out.images.shape == (2, 32, 32, 1)
    custom = run(pipe, prompt="a photo of a striped T-shirt/top")
    assert custom.prompts == ["a photo of a striped T-shirt/top"] * 2
    assert np.abs(custom.images - run(pipe).images).max() > 1e-5


def test_fixed_noise_per_row_with_generator_list(pipe):
    gens = [torch.Generator().manual_seed(5) for _ in range(3)]
    out = pipe([1, 1, 1], [0.5, 0.5, 0.5], generator=gens, num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)  # same seed, same s -> same image


def test_class_names_and_ids_give_the_same_images(pipe):
    by_id = run(pipe, labels=(1, 3))
    by_name = run(pipe, labels=("Trouser", "dress"))
    assert by_name.class_labels == [1, 3] and by_name.prompts == by_id.prompts
    np.testing.assert_array_equal(by_name.images, by_id.images)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_labels=[0], difficulty=1.5), "difficulty"),
    (dict(class_labels=[0], difficulty=-0.1), "difficulty"),
    (dict(class_labels=[0], difficulty=math.nan), "difficulty"),
    (dict(class_labels=[0], difficulty="hard"), "difficulty"),
    (dict(class_labels=[7], difficulty=0.5), "class_labels"),
    (dict(class_labels=[-1], difficulty=0.5), "class_labels"),
    (dict(class_labels=[0.5], difficulty=0.5), "class_labels"),
    (dict(class_labels=[], difficulty=0.5), "class_labels"),
    (dict(class_labels=["Jacket"], difficulty=0.5), "Unknown class 'Jacket'"),
    (dict(class_labels=[0, 1], difficulty=[0.1, 0.2, 0.3]), "same length|has 2 entries"),
    (dict(class_labels=[0, 1], difficulty=0.5, prompt=["a", "b", "c"]), "prompt"),
    (dict(class_labels=[0], difficulty=0.5, guidance_scale=math.inf), "guidance_scale"),
    (dict(class_labels=[0], difficulty=0.5, difficulty_guidance_scale=-1.0), "difficulty_guidance_scale"),
    (dict(class_labels=[0], difficulty=0.5, num_inference_steps=0), "num_inference_steps"),
    (dict(class_labels=[0], difficulty=0.5, scheduler="plms"), "scheduler"),
    (dict(class_labels=[0], difficulty=0.5, calibrated=True), "calibration"),
    (dict(class_labels=[0], difficulty=0.5, guidance_interval=(2.0, 1.0)), "guidance_interval"),
    (dict(class_labels=[0], difficulty=0.5, guidance_interval=(math.nan, 1.0)), "guidance_interval"),
    (dict(class_labels=[0], difficulty=0.5, guidance_interval=(1.0,)), "guidance_interval"),
    (dict(class_labels=[0], difficulty=0.5, guidance_rescale=1.5), "guidance_rescale"),
    (dict(class_labels=[0], difficulty=0.5, guidance_rescale=math.nan), "guidance_rescale"),
])
def test_bad_inputs_raise_clear_errors(pipe, kwargs, match):
    kwargs = dict(kwargs)
    steps = kwargs.pop("num_inference_steps", 2)
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs, num_inference_steps=steps, output_type="np")


def test_calibrated_maps_through_the_curve():
    p = dummy_pipeline()
    p.calibration = Calibration(requested=[0.0, 0.5, 1.0], measured={str(c): [0.0, 0.25, 0.5] for c in range(4)})
    out = p([1, 2], [0.25, 0.4], calibrated=True, num_inference_steps=2, output_type="np")
    assert out.difficulties == [0.25, 0.4]
    assert out.conditioning_difficulties == pytest.approx([0.5, 0.8])


def test_baseline_without_encoder():
    base = dummy_pipeline(with_encoder=False)
    out = run(base)
    assert out.images.shape == (2, 32, 32, 1)
    with pytest.raises(ValueError, match="difficulty_only"):
        run(base, difficulty_only=True)


def test_sd2_shaped_base_generates():
    cfg = TinySDConfig(**{**TINY.__dict__, "prediction_type": "v_prediction"})
    p = dummy_pipeline(config=cfg)
    assert p.unet.config.use_linear_projection and p.scheduler.config.prediction_type == "v_prediction"
    assert run(p).images.shape == (2, 32, 32, 1)


def test_zero_terminal_snr_base_starts_sampling_from_pure_noise(tmp_path):
    cfg = TinySDConfig(**{**TINY.__dict__, "prediction_type": "v_prediction", "zero_terminal_snr": True})
    save_sd_folder(tmp_path / "zsnr", build_components(cfg, class_names=CLASSES), cfg)
    sd = StableDiffusionPipeline.from_pretrained(tmp_path / "zsnr")  # the schedule travels in the folder's config
    p = dummy_pipeline(config=cfg)
    p.scheduler = sd.scheduler
    assert p.scheduler.alphas_cumprod[-1].item() == 0.0  # the last training step is pure noise
    plain = dummy_pipeline(config=TinySDConfig(**{**TINY.__dict__, "prediction_type": "v_prediction"}))
    assert plain.scheduler.alphas_cumprod[-1].item() > 1e-3
    for name in ("ddim", "dpm++", "euler"):
        sched = p.get_scheduler(name)
        sched.set_timesteps(15)
        assert int(sched.timesteps[0]) == 999, name  # trailing spacing: sampling starts where training noise is pure
        assert sched.alphas_cumprod[-1].item() < 1e-6, name  # rescaled betas too (DPM++/Euler keep 2**-24, not 0)
        out = run(p, scheduler=name).images
        assert np.isfinite(out).all() and out.shape == (2, 32, 32, 1)


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ValueError, match="v_prediction"):
        build_components(TinySDConfig(**{**TINY.__dict__, "zero_terminal_snr": True}), class_names=CLASSES)


def test_u_net_without_top_attention_still_conditions_on_difficulty():
    cfg = TinySDConfig(**{**TINY.__dict__, "vae_channels": (16, 32), "unet_channels": (32, 32, 64),
                          "unet_top_attention": False})
    p = dummy_pipeline(config=cfg)
    assert p.unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert p.unet.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    out = run(p, labels=(0, 0), s=(0.1, 0.9), seed=3)  # same noise, two difficulties: the tokens must reach it
    assert out.images.shape == (2, 32, 32, 1) and np.abs(out.images[0] - out.images[1]).max() > 1e-4
    with pytest.raises(ValueError, match="no cross-attention"):
        dummy_pipeline(config=TinySDConfig(**{**TINY.__dict__, "unet_top_attention": False}))
    assert TinySDConfig().unet_top_attention is False  # the shipped shape: 3 levels, attention from level 2


def test_concurrent_calls_give_the_images_of_calls_alone(pipe):
    """The app serves several users at once from one pipeline: each call owns its scheduler state."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [dict(labels=(c, 3 - c), s=(0.1 * c, 0.9), seed=c, scheduler="dpm++", num_inference_steps=6)
            for c in range(4)]
    alone = [run(pipe, **job).images for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: run(pipe, **job).images, jobs * 2))
    for i, images in enumerate(together):
        np.testing.assert_array_equal(images, alone[i % 4])


def test_calibrated_sampling_warns_at_settings_its_curve_was_not_fitted_at():
    import warnings

    from dacd.calibration import CalibrationSettingsWarning

    p = dummy_pipeline()
    meta = {"steps": 2, "scheduler": "dpm++", "guidance_scale": 5.0, "difficulty_guidance_scale": 8.0}
    p.calibration = Calibration([0.0, 0.5, 1.0], {str(c): [0.0, 0.25, 0.5] for c in range(4)}, meta)
    call = dict(class_labels=[1], difficulty=[0.3], calibrated=True, num_inference_steps=2, output_type="np")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationSettingsWarning)
        p(**call)  # the curve's own settings: silent
        p(**{**call, "calibrated": False, "difficulty_guidance_scale": 12.0})  # uncalibrated: no curve involved
    for change, match in ((dict(difficulty_guidance_scale=12.0), r"difficulty guidance 12 \(curve: 8\)"),
                          (dict(num_inference_steps=3), r"steps 3 \(curve: 2\)"),
                          (dict(guidance_scale=2.0), r"fitted at: text guidance 2 \(curve: 5\)\. "),  # g_d still 8
                          (dict(difficulty_guidance_scale=None), r"difficulty guidance 5 \(curve: 8\)"),
                          (dict(scheduler="ddim"), r"scheduler ddim \(curve: dpm\+\+\)")):
        with pytest.warns(CalibrationSettingsWarning, match=match) as record:
            out = p(**{**call, **change})
        assert out.conditioning_difficulties == pytest.approx([0.6])  # still sampled, through the curve
        assert [w.filename for w in record if w.category is CalibrationSettingsWarning] == [__file__]  # the caller
    for change, match in ((dict(guidance_interval=(0.3, 5.0)), r"guidance interval \(0.3, 5\] \(curve: every step\)"),
                          (dict(guidance_rescale=0.7), r"guidance rescale 0.7 \(curve: none\)")):
        with pytest.warns(CalibrationSettingsWarning, match=match):
            p(**{**call, **change})
    only = r"fitted at: difficulty only \(curve: with the class prompt\)\. "
    with pytest.warns(CalibrationSettingsWarning, match=only):
        p(**{**call, "difficulty_only": True, "guidance_scale": 2.0})  # text guidance unused: not named
    p.scheduler = SCHEDULERS["ddim"].from_config(p.scheduler.config)  # scheduler=None: the pipeline's own
    with pytest.warns(CalibrationSettingsWarning, match=r"scheduler ddim \(curve: dpm\+\+\)"):
        p(**{**call, "scheduler": None})
    base = dummy_pipeline(with_encoder=False)  # no encoder: the difficulty scale is not compared
    base.calibration = p.calibration
    assert base.calibration_differences(num_inference_steps=2, guidance_scale=5.0, difficulty_guidance_scale=3.0) == []
    assert Calibration([0.0, 1.0], {"0": [0.0, 1.0]}).setting_differences(steps=7) == []  # meta records nothing
    with pytest.raises(ValueError, match="unknown sampling settings"):
        p.calibration.setting_differences(eta=0.0)
