"""End-to-end training checks; scripts run in subprocesses (accelerate keeps one state per process)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_BASE_ARGS, run_script, train_dacd_script

pytestmark = pytest.mark.slow


def train(tmp, name, base, data_dir, scores, *extra):
    return train_dacd_script(tmp / name, base, data_dir, scores, *extra)


@pytest.fixture(scope="module")
def trained(tiny_dacd, tmp_path_factory):
    return {"tmp": tmp_path_factory.mktemp("dacd"), "out": tiny_dacd}


def test_base_folder_loads_in_stock_diffusers_offline(tiny_base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    assert pipe.tokenizer.model_max_length == 77
    sentence = "A crumpled grey sweatshirt, folded twice; photographed at dusk (ISO 3200) — naïve!"
    ids = pipe.tokenizer(sentence).input_ids
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == sentence.lower().replace(" ", "")
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the latents' std
    img = pipe("a photo of a Bag", height=32, width=32, num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 1)
    metrics = json.loads((tiny_base / "metrics.json").read_text())
    assert {"mse", "psnr"} <= set(metrics["vae_reconstruction_test"])
    assert (tiny_base / "loss_unet.csv").read_text().startswith("step,loss")


def test_dacd_folder_layout_and_generation(trained):
    from dacd.pipeline import DifficultyControlledPipeline

    out = trained["out"]
    cfg = json.loads((out / "dacd_config.json").read_text())
    assert cfg["difficulty_encoder"] and cfg["lora"]["rank"] == 4 and cfg["lora"]["alpha"] == 8
    assert not cfg["base"].startswith("/")  # relative reference to the base folder
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    res = pipe([0, 6], [0.1, 0.9], num_inference_steps=2, output_type="np")
    assert res.images.shape == (2, 32, 32, 1) and np.isfinite(res.images).all()


def test_lora_alpha_survives_save(trained, tiny_base):
    """Merging W + (alpha/r)·B·A by hand into the plain base U-Net must give the same
    outputs as the loaded pipeline; the wrong scale (alpha lost) must not."""
    from diffusers import UNet2DConditionModel

    from dacd.pipeline import DifficultyControlledPipeline

    pipe = DifficultyControlledPipeline.from_pretrained(trained["out"])
    pipe.set_progress_bar_config(disable=True)
    sd = load_file(str(trained["out"] / "pytorch_lora_weights.safetensors"))

    def merged(scale):
        unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
        params = dict(unet.named_parameters())
        with torch.no_grad():
            for k, a in sd.items():
                if ".lora_A." in k:
                    b = sd[k.replace(".lora_A.", ".lora_B.")]
                    name = k.removeprefix("unet.").replace(".lora_A.weight", ".weight")
                    params[name] += scale * (b @ a)
        return unet

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.cat([pipe.encode_prompt(["a photo of a Bag"] * 2),
                     pipe.difficulty_encoder(torch.tensor([8, 8]), torch.tensor([0.2, 0.8]))], 1)
    with torch.no_grad():
        ours = pipe.unet(x, 500, encoder_hidden_states=ctx).sample
        right = merged(8 / 4)(x, 500, encoder_hidden_states=ctx).sample
        wrong = merged(1.0)(x, 500, encoder_hidden_states=ctx).sample
    err = (ours - right).abs().max().item()
    assert err < 1e-4
    assert (ours - wrong).abs().max().item() > 10 * max(err, 1e-6)


def test_stock_load_lora_weights_reproduces_our_images(trained, tiny_base):
    from diffusers import StableDiffusionPipeline

    from dacd.pipeline import DifficultyControlledPipeline

    ours = DifficultyControlledPipeline.from_pretrained(trained["out"])
    ours.set_progress_bar_config(disable=True)
    res = ours([4], [0.7], guidance_scale=3.0, difficulty_guidance_scale=None, num_inference_steps=3,
               scheduler="ddim", output_type="np",
               generator=torch.Generator().manual_seed(3))
    stock = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(str(trained["out"]), weight_name="pytorch_lora_weights.safetensors")
    stock.scheduler = ours.get_scheduler("ddim")
    stock.set_progress_bar_config(disable=True)
    enc = ours.difficulty_encoder
    cond = torch.cat([stock.encode_prompt(["a photo of a Coat"], "cpu", 1, False)[0],
                      enc(torch.tensor([4]), torch.tensor([0.7]))], 1)
    uncond = torch.cat([stock.encode_prompt([""], "cpu", 1, False)[0], enc.null(1)], 1)
    ref = stock(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=3.0, num_inference_steps=3,
                height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(3)).images
    np.testing.assert_allclose(res.images, ref, atol=1e-4)


def test_resume_equals_uninterrupted(trained, tiny_base, fake_fmnist, tiny_scores):
    tmp = trained["tmp"]
    _, run, proc = train(tmp, "killed", tiny_base, fake_fmnist, tiny_scores, "--stop-at", "2")
    assert proc.returncode == 3 and "rerun to continue" in proc.stdout
    assert (run / "checkpoint-2" / "trainable.safetensors").is_file()
    out, _, proc = train(tmp, "killed", tiny_base, fake_fmnist, tiny_scores)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    a = load_file(str(trained["out"] / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    ea = load_file(str(trained["out"] / "difficulty_encoder" / "diffusion_pytorch_model.safetensors"))
    eb = load_file(str(out / "difficulty_encoder" / "diffusion_pytorch_model.safetensors"))
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=1e-6, rtol=1e-5)


def test_baseline_mode(tiny_baseline):
    from dacd.pipeline import DifficultyControlledPipeline

    out = tiny_baseline
    assert not (out / "difficulty_encoder").exists()
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.difficulty_encoder is None
    assert pipe([1], 0.5, num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 1)


def test_sd2_shaped_base_trains_and_generates(fake_fmnist, tiny_scores, tmp_path):
    from dacd.pipeline import DifficultyControlledPipeline

    run_script("train/train_base.py", "--data-dir", fake_fmnist, "--output-dir", tmp_path / "base2",
               "--run-dir", tmp_path / "run2", "--prediction-type", "v_prediction", *TINY_BASE_ARGS)
    out, _, proc = train(tmp_path, "dacd2", tmp_path / "base2", fake_fmnist, tiny_scores)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.use_linear_projection
    assert pipe([2], [0.5], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 1)
