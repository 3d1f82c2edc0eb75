"""Training checks: the loops' pieces in-process on tiny random models; end-to-end runs of the
scripts in subprocesses (accelerate keeps one state per process), marked slow."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from conftest import ROOT, TINY_BASE_ARGS, load_module, run_script, train_dacd_script
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from dacd.data import FASHION_MNIST_CLASSES
from dacd.pipeline import DifficultyControlledPipeline
from dacd.tiny import TinySDConfig, build_components, build_scheduler
from dacd.training import (
    EMA,
    Checkpointer,
    DacdTrainConfig,
    TrainingData,
    TrainingSteps,
    balanced_weights,
    confuser_caption_lists,
    confuser_classes,
    diffusion_target,
    train_dacd,
)


def train(tmp, name, base, data_dir, scores, *extra):
    return train_dacd_script(tmp / name, base, data_dir, scores, *extra)


def load_script(name: str):
    return load_module(ROOT / "train" / f"{name}.py")


# ---------------------------------------------------------------- in-process: the loops' pieces

CLASSES = ["zero", "one", "two", "three"]


def tiny_pipe() -> DifficultyControlledPipeline:
    parts = build_components(TinySDConfig(vae_channels=(32, 64, 64), unet_channels=(32, 64), unet_top_attention=True),
                             class_names=CLASSES, seed=0)
    return DifficultyControlledPipeline(**parts, class_names=CLASSES)


@pytest.mark.parametrize("text_dropout, difficulty_dropout", [(1.0, 0.0), (0.0, 1.0)])
def test_dropout_replaces_prompt_and_difficulty_tokens(tmp_path, text_dropout, difficulty_dropout):
    """What the U-Net receives: text tokens of the empty prompt under text dropout, the
    encoder's null tokens (all K) under difficulty dropout, the real ones otherwise."""
    pipe, seen = tiny_pipe(), []
    pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    n, label, s = 8, 2, 0.7  # one class and one s: every row of the batch must be the same
    data = TrainingData(images=torch.randint(0, 256, (n, 1, 32, 32), generator=torch.Generator().manual_seed(0),
                                             dtype=torch.uint8),
                        labels=np.full(n, label), s=np.full(n, s, np.float32), class_names=CLASSES)
    cfg = DacdTrainConfig(max_train_steps=1, batch_size=n, lora_rank=2, num_tokens=3, lr=0.0, encoder_lr=0.0,
                          text_dropout=text_dropout, difficulty_dropout=difficulty_dropout)
    train_dacd(pipe, data, cfg, tmp_path, progress=False, log=lambda *_: None)  # lr 0: weights stay as seen
    (ctx,) = seen
    text, tokens = ctx[:, :-3], ctx[:, -3:]
    empty, prompt = (pipe.encode_prompt([p] * n, "cpu") for p in ("", pipe.class_prompt(label)))
    enc = pipe.difficulty_encoder
    with torch.no_grad():
        null, real = enc.null(n), enc(torch.full((n,), label), torch.full((n,), s))
    text_want, text_not = (empty, prompt) if text_dropout else (prompt, empty)
    tokens_want, tokens_not = (null, real) if difficulty_dropout else (real, null)
    torch.testing.assert_close(text, text_want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, tokens_want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(text, text_not, atol=1e-3) and not torch.allclose(tokens, tokens_not, atol=1e-3)


def _trainable(pipe) -> dict:
    mods = {"unet": pipe.unet, "encoder": pipe.difficulty_encoder}
    return {f"{n}/{k}": p.detach().clone() for n, m in mods.items() for k, p in m.named_parameters() if p.requires_grad}


def test_dacd_ema_is_saved_resumes_and_leaves_training_alone(tmp_path):
    """With ema_decay the pipeline ends with the EMA of its LoRA and encoder (the shadow in the
    last checkpoint), training itself is the no-EMA run's, and a killed and resumed run ends
    with the same weights as one run."""
    n = 8
    data = TrainingData(images=torch.randint(0, 256, (n, 1, 32, 32), generator=torch.Generator().manual_seed(1),
                                             dtype=torch.uint8),
                        labels=np.arange(n) % 4, s=np.linspace(0.05, 0.95, n).astype(np.float32), class_names=CLASSES)

    logged = []

    def run(folder, ema_decay, stop_at=None, **other):
        pipe = tiny_pipe()
        cfg = DacdTrainConfig(**{"max_train_steps": 4, **other}, batch_size=4, lora_rank=2, num_tokens=3, lr=1e-2,
                              encoder_lr=1e-2, warmup_steps=1, checkpointing_steps=1, ema_decay=ema_decay)
        res = train_dacd(pipe, data, cfg, tmp_path / folder, progress=False, log=logged.append, stop_at=stop_at)
        return pipe, res

    ema_pipe, res = run("ema", 0.2)  # low enough that the decay, not the warm-up, sets the last steps
    plain_pipe, _ = run("plain", 0.0)
    assert res["finished"]
    saved = load_file(str(tmp_path / "ema" / "checkpoint-4" / "trainable.safetensors"))
    final, plain = _trainable(ema_pipe), _trainable(plain_pipe)
    assert final.keys() == plain.keys() and any(".lora_A." in k for k in final) and any(
        k.startswith("encoder/") for k in final)
    before = load_file(str(tmp_path / "ema" / "checkpoint-3" / "trainable.safetensors"))
    d = min(0.2, (1 + 3) / (10 + 3))  # the last step's: the configured decay
    moved = 0
    for k, v in final.items():
        torch.testing.assert_close(saved[f"ema:{k}"], d * before[f"ema:{k}"] + (1 - d) * saved[k])  # tracks training
        torch.testing.assert_close(v, saved[f"ema:{k}"])  # the pipeline holds the shadow
        torch.testing.assert_close(saved[k], plain[k])  # the trained weights are the no-EMA run's
        moved += not torch.allclose(v, plain[k])
    assert moved > len(final) // 2  # and the EMA is not the last step's weights
    assert "ema:unet/conv_in.weight" not in saved  # the frozen base is not averaged

    _, res = run("killed", 0.2, stop_at=2)
    assert not res["finished"]
    with pytest.raises(ValueError, match="was trained with ema_decay 0.2"):  # an unfinished EMA run needs its EMA
        run("killed", 0.0)
    logged.clear()
    resumed, res = run("killed", 0.2)
    assert res["finished"] and not any("other settings" in m for m in logged)  # same settings: nothing to say
    for k, v in _trainable(resumed).items():
        torch.testing.assert_close(v, final[k], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="without EMA"):  # a no-EMA run's checkpoint cannot resume with EMA
        run("plain", 0.2)
    run("changed", 0.0, stop_at=2)
    logged.clear()
    run("changed", 0.0, balance_power=1.0, max_train_steps=5)  # another balance is said; a longer run is not
    note = [m for m in logged if "other settings" in m]
    assert len(note) == 1 and "balance_power 0.5 -> 1.0" in note[0] and "max_train_steps" not in note[0]
    raw, res = run("ema", 0.0)  # a finished EMA run saved without it: its last step's weights
    assert res["finished"]
    for k, v in _trainable(raw).items():
        torch.testing.assert_close(v, saved[k])
    with pytest.raises(ValueError, match="ema_decay must be in"):
        DacdTrainConfig(ema_decay=1.0)


def test_balanced_weights():
    s = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.55, 0.56, 0.95])  # bins 0 (x6), 5 (x2), 9 (x1)
    uniform = balanced_weights(s, power=0)
    np.testing.assert_allclose(uniform, np.full(len(s), 1 / len(s)))
    flat = balanced_weights(s, power=1)
    assert flat.sum() == pytest.approx(1.0)
    np.testing.assert_allclose([flat[:6].sum(), flat[6:8].sum(), flat[8:].sum()], [1 / 3] * 3)
    half = balanced_weights(s, power=0.5)
    assert half.sum() == pytest.approx(1.0) and uniform[8] < half[8] < flat[8]  # the rare image gains weight


def test_balanced_weights_per_class_keeps_class_shares_and_lifts_a_rare_hard_class():
    # class 0: 8 easy images and one hard; class 1: 3 easy and 3 hard (the hard bin is mostly class 1's)
    s = np.array([0.01] * 8 + [0.95] + [0.02] * 3 + [0.9] * 3)
    y = np.array([0] * 9 + [1] * 6)
    flat_all = balanced_weights(s, power=1)
    per_class = balanced_weights(s, power=1, groups=y)
    assert per_class.sum() == pytest.approx(1.0)
    np.testing.assert_allclose([per_class[y == 0].sum(), per_class[y == 1].sum()], [9 / 15, 6 / 15])
    np.testing.assert_allclose(per_class[8], per_class[y == 0][:8].sum())  # class 0: its one hard image = its easy bin
    assert per_class[8] > flat_all[8]  # over all images the hard bin is shared with class 1's three
    np.testing.assert_allclose(balanced_weights(s, power=0, groups=y), np.full(len(s), 1 / len(s)))
    with pytest.raises(ValueError, match="one group per image"):
        balanced_weights(s, power=1, groups=y[:-1])


def test_ema_warmup_decay_and_copy_to():
    net = nn.Linear(2, 2)
    old = {k: p.detach().clone() for k, p in net.named_parameters()}
    ema = EMA(net, decay=0.999)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=0)  # warm-up: decay min(0.999, 1/10) = 0.1
    for k, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[k], 0.1 * old[k] + 0.9 * p.detach())
    before = {k: v.clone() for k, v in ema.shadow.items()}
    ema.update(net, step=10**6)  # (1 + step) / (10 + step) > 0.999: the decay itself
    for k, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[k], 0.999 * before[k] + 0.001 * p.detach())
    ema.copy_to(net)
    for k, p in net.named_parameters():
        assert torch.equal(p.detach(), ema.shadow[k])


def test_training_steps_log_checkpoint_and_resume(tmp_path):
    """History every `log_every` steps and at the last; checkpoints every `checkpointing_steps`
    and at the last; a stopped run resumes after its last step, history included."""
    losses = [1.0, 2.0, 3.0, 4.0, 5.0]

    def run(stop_at=None):
        net = nn.Linear(2, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        steps = TrainingSteps(Checkpointer(tmp_path, {"net": net}, opt, keep=10), "latest", total=5,
                              stop_at=stop_at, log_every=2, checkpointing_steps=2, desc="t", progress=False,
                              state={"note": "x"})
        ran = []
        for step in steps:
            ran.append(step)
            steps.record(step, losses[step])
        return steps, ran

    steps, ran = run(stop_at=3)
    assert ran == [0, 1, 2] and not steps.finished
    assert steps.history == [(2, 1.5), (3, 3.0)]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    steps, ran = run()
    assert ran == [3, 4] and steps.start == 3 and steps.finished
    assert steps.history == [(2, 1.5), (3, 3.0), (4, 4.0), (5, 5.0)]
    state = json.loads((tmp_path / "checkpoint-5" / "state.json").read_text())
    assert state["step"] == 5 and state["note"] == "x" and [tuple(h) for h in state["history"]] == steps.history
    assert steps.summary()["steps"] == 5 and steps.summary()["finished"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_target_values(prediction_type):
    """SD2-shaped bases learn v = alpha_t * noise - sigma_t * x0; SD1 bases the noise."""
    sched = build_scheduler(TinySDConfig(prediction_type=prediction_type))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    abar = sched.alphas_cumprod[t].double()[:, None, None, None]
    want = noise if prediction_type == "epsilon" else (abar.sqrt() * noise - (1 - abar).sqrt() * x0).float()
    got = diffusion_target(sched, x0, noise, t)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, noise if prediction_type == "v_prediction" else x0, atol=1e-2)


def test_diffusion_target_refuses_other_prediction_types():
    with pytest.raises(ValueError, match="sample"):
        diffusion_target(build_scheduler(TinySDConfig(prediction_type="sample")), torch.zeros(1), torch.zeros(1),
                         torch.zeros(1, dtype=torch.long))


def test_exclude_regions_and_classes_select_training_images(fake_fmnist, tmp_path):
    cli = load_script("train_dacd")
    n = 300  # the fake dataset's training split
    table = pd.DataFrame({"id": [f"train:{i}" for i in range(n)], "label": (np.arange(n) * 7) % 10,
                          "s": np.linspace(0, 1, n, dtype=np.float32),
                          "region": np.where(np.arange(n) % 3 == 0, "hard-to-learn", "easy-to-learn")})
    table.to_parquet(tmp_path / "scores.parquet")

    def load(*options):
        args = cli.parse_args(["--data-dir", str(fake_fmnist), "--scores", str(tmp_path / "scores.parquet"),
                               *options])
        return cli.load_training_data(args)

    data, dropped = load()
    assert len(data.labels) == n and dropped == 0
    data, dropped = load("--exclude-regions", "hard-to-learn")
    ids = np.array([int(i.split(":")[1]) for i in data.ids])
    assert dropped == 100 and len(ids) == 200 and (ids % 3 != 0).all()
    np.testing.assert_array_equal(data.s, table["s"].to_numpy()[ids])  # scores follow their images
    data, dropped = load("--classes", FASHION_MNIST_CLASSES[1], "5", "--exclude-regions", "hard-to-learn")
    ids = np.array([int(i.split(":")[1]) for i in data.ids])
    assert set(data.labels) == {1, 5} and (ids % 3 != 0).all()
    assert len(ids) == sum(1 for i in range(n) if (i * 7) % 10 in (1, 5) and i % 3) and dropped == n - len(ids)


def test_confuser_classes_and_caption_lists():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]])
    labels = np.array([0, 2, 0, 1])
    np.testing.assert_array_equal(confuser_classes(probs, labels), [1, 1, 2, 2])  # never the label
    # a wrong out-of-fold prediction names the confuser; a right one leaves the classifier's second choice
    np.testing.assert_array_equal(confuser_classes(probs, labels, oof_pred=[0, 0, 1, 1]), [1, 0, 1, 2])
    with pytest.raises(ValueError, match="probs must be"):
        confuser_classes(probs[:3], labels)
    names = ["zero", "one", "two"]
    labels = np.array([0] * 10 + [1] * 4)
    confusers = np.array([1] * 6 + [2] * 3 + [2] + [0] * 4)
    s = np.array([0.5] * 6 + [0.4] * 3 + [0.9] + [0.0] * 4)  # class 1 has no image in the medium band
    lists = confuser_caption_lists("a photo of a {}", names, labels, confusers, s, size=10)
    assert set(lists) == {"zero", "one"}  # "two" has no training image
    assert lists["zero"].count("a photo of a zero like a one") == 7  # 6 of 9 in band: 6.67 -> 7 (largest remainder)
    assert lists["zero"].count("a photo of a zero like a two") == 3 and len(lists["zero"]) == 10
    assert lists["one"] == ["a photo of a one like a zero"] * 10  # no image in band: all its images count


@pytest.mark.slow
def test_confuser_prompts_follow_out_of_fold_errors(fake_fmnist, tiny_scores):
    cli = load_script("train_dacd")
    args = cli.parse_args(["--data-dir", str(fake_fmnist), "--scores", str(tiny_scores / "scores.parquet"),
                           "--confuser-prompts", "--confuser-classifier", str(tiny_scores / "classifier"),
                           "--no-progress"])
    data, _ = cli.load_training_data(args)
    table = pd.read_parquet(tiny_scores / "scores.parquet").set_index("id").loc[data.ids]
    assert len(data.confusers) == len(data.labels) and (data.confusers != data.labels).all()
    wrong = table["pred"].to_numpy() != data.labels
    assert wrong.any()  # a one-epoch scorer errs on the fake data: the rule below is exercised
    np.testing.assert_array_equal(data.confusers[wrong], table["pred"].to_numpy()[wrong])
    args.confuser_classifier = str(fake_fmnist)
    with pytest.raises(SystemExit, match="not a classifier folder"):
        cli.load_training_data(args)


# ---------------------------------------------------------------- end to end (subprocesses)


@pytest.fixture(scope="module")
def trained(tiny_dacd, tmp_path_factory):
    return {"tmp": tmp_path_factory.mktemp("dacd"), "out": tiny_dacd}


@pytest.mark.slow
def test_base_folder_loads_in_stock_diffusers_offline(tiny_base):
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


@pytest.mark.slow
def test_dacd_folder_layout_and_generation(trained):
    out = trained["out"]
    cfg = json.loads((out / "dacd_config.json").read_text())
    assert cfg["difficulty_encoder"] and cfg["lora"]["rank"] == 4 and cfg["lora"]["alpha"] == 8
    assert not cfg["base"].startswith("/")  # relative reference to the base folder
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    res = pipe([0, 6], [0.1, 0.9], num_inference_steps=2, output_type="np")
    assert res.images.shape == (2, 32, 32, 1) and np.isfinite(res.images).all()


@pytest.mark.slow
def test_lora_alpha_survives_save(trained, tiny_base):
    """Merging W + (alpha/r)·B·A by hand into the plain base U-Net must give the same
    outputs as the loaded pipeline; the wrong scale (alpha lost) must not."""
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


@pytest.mark.slow
def test_stock_load_lora_weights_reproduces_our_images(trained, tiny_base):
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_confuser_prompt_training_writes_a_prompt_file(tiny_base, fake_fmnist, tiny_scores, tmp_path):
    from dacd.generation import load_prompt_lists

    out, _, proc = train(tmp_path, "confuser", tiny_base, fake_fmnist, tiny_scores, "--confuser-prompts",
                         "--confuser-classifier", str(tiny_scores / "classifier"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "dacd_config.json").read_text())["confuser_prompts"] is True
    lists = load_prompt_lists(out / "confuser_prompts.json", FASHION_MNIST_CLASSES)
    assert sorted(lists) == list(range(10)) and all(len(v) == 100 for v in lists.values())
    for c, captions in lists.items():
        name = FASHION_MNIST_CLASSES[c]
        assert all(x.startswith(f"a photo of a {name} like a ") and not x.endswith(f" like a {name}")
                   for x in captions)
    # the model samples with its confuser prompts unless --prompts says otherwise
    gen = tmp_path / "generated"
    run_script("train/generate.py", "--out", gen, "--model", out, "--evaluator", "none", "--per-class", "2",
               "--classes", "Shirt", "Bag", "--steps", "2", "--batch-size", "4", "--no-progress")
    manifest = pd.read_parquet(gen / "manifest.parquet")
    assert len(manifest) == 4
    for name, prompt in zip(manifest["class"], manifest.prompt):
        assert prompt in lists[FASHION_MNIST_CLASSES.index(name)]


@pytest.mark.slow
def test_baseline_mode(tiny_baseline):
    out = tiny_baseline
    assert not (out / "difficulty_encoder").exists()
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.difficulty_encoder is None
    assert pipe([1], 0.5, num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 1)


@pytest.mark.slow
def test_sd2_shaped_base_trains_and_generates(fake_fmnist, tiny_scores, tmp_path):
    run_script("train/train_base.py", "--data-dir", fake_fmnist, "--output-dir", tmp_path / "base2",
               "--run-dir", tmp_path / "run2", "--prediction-type", "v_prediction", "--kl-weight", "1e-4",
               "--deterministic-encoder", *TINY_BASE_ARGS)
    metrics = json.loads((tmp_path / "base2" / "metrics.json").read_text())
    assert metrics["train_config"]["kl_weight"] == 1e-4 and metrics["tiny_config"]["deterministic_encoder"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tmp_path / "base2", subfolder="vae")
    with torch.no_grad():
        post = vae.encode(torch.rand(2, 1, 32, 32) * 2 - 1).latent_dist
    assert post.std.max() < 1e-6 and vae.config.scaling_factor == pytest.approx(metrics["vae_scaling_factor"])
    # recomputed for the means: not the factor of the noisy samples the VAE stage saved
    stochastic = json.loads((tmp_path / "run2" / "vae_final" / "config.json").read_text())["scaling_factor"]
    assert abs(vae.config.scaling_factor - stochastic) > 1e-3
    out, _, proc = train(tmp_path, "dacd2", tmp_path / "base2", fake_fmnist, tiny_scores)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipe = DifficultyControlledPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.use_linear_projection
    assert pipe([2], [0.5], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 1)


def test_a_deterministic_encoder_keeps_the_means_and_drops_the_posterior_noise():
    from dacd.training import make_encoder_deterministic

    vae = build_components(TinySDConfig(vae_channels=(16, 32), unet_channels=(32, 64), unet_top_attention=True),
                           class_names=list(FASHION_MNIST_CLASSES), seed=0)["vae"].eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        decoded = vae.decode(before.mean).sample
        assert before.std.min() > 1e-3  # a fresh VAE's posterior is noisy
        make_encoder_deterministic(vae)
        after = vae.encode(x).latent_dist
        torch.testing.assert_close(after.mean, before.mean)
        assert after.std.max() < 1e-6
        torch.testing.assert_close(after.sample(torch.Generator().manual_seed(1)), after.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded)


def test_a_base_run_folder_refuses_other_model_settings(tmp_path):
    """Resuming train_base.py's run folder with another schedule or shape would mix two models."""
    base = load_module(ROOT / "train" / "train_base.py")
    v = TinySDConfig(prediction_type="v_prediction")
    base.check_run_shape(tmp_path, v)  # a new folder remembers its settings
    assert json.loads((tmp_path / "tiny_sd_config.json").read_text())["prediction_type"] == "v_prediction"
    base.check_run_shape(tmp_path, TinySDConfig(prediction_type="v_prediction"))  # the same settings resume
    with pytest.raises(SystemExit, match="zero_terminal_snr: False then, True now"):
        base.check_run_shape(tmp_path, TinySDConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    with pytest.raises(SystemExit, match="unet_channels"):
        base.check_run_shape(tmp_path, TinySDConfig(prediction_type="v_prediction", unet_channels=(64, 128)))
    saved = json.loads((tmp_path / "tiny_sd_config.json").read_text())
    del saved["deterministic_encoder"]  # a folder from before the option ran with its default
    (tmp_path / "tiny_sd_config.json").write_text(json.dumps(saved))
    base.check_run_shape(tmp_path, TinySDConfig(prediction_type="v_prediction"))
    with pytest.raises(SystemExit, match="deterministic_encoder: False then, True now"):
        base.check_run_shape(tmp_path, TinySDConfig(prediction_type="v_prediction", deterministic_encoder=True))
