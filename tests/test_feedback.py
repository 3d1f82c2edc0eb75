"""Feedback guidance: the classifier's gradient moves each image's measured difficulty towards its target."""

import numpy as np
import pytest
import torch

from dacd.classifier import build_classifier
from dacd.feedback import FeedbackError, FeedbackGuidance
from dacd.tiny import TinySDConfig
from tests.test_pipeline import CLASSES, TINY, dummy_pipeline, run


@pytest.fixture(scope="module")
def pipe():
    return dummy_pipeline()


@pytest.fixture(scope="module")
def v_pipe():
    return dummy_pipeline(config=TinySDConfig(**{**TINY.__dict__, "prediction_type": "v_prediction"}))


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return build_classifier("resnet10t", in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()


def measured_s(scorer, images_nhwc, labels):
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).float()
    with torch.no_grad():
        p = torch.softmax(scorer(x), -1)
    return 1 - p[torch.arange(len(labels)), torch.as_tensor(labels)].numpy()


def test_scale_zero_or_no_steps_is_plain_sampling(pipe, scorer):
    plain = run(pipe).images
    for fb in (FeedbackGuidance(scorer, scale=0.0), FeedbackGuidance(scorer, steps=0)):
        np.testing.assert_array_equal(run(pipe, feedback=fb).images, plain)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "ddpm"])
@pytest.mark.parametrize("v_prediction", [False, True])
def test_hook_step_lowers_the_difficulty_error(pipe, v_pipe, scorer, scheduler, v_prediction):
    """One hooked step: the x0 implied by the rewritten output measures closer to the target
    (epsilon and v-prediction models, every scheduler feedback runs with)."""
    p = v_pipe if v_prediction else pipe
    sched = p.get_scheduler(scheduler)
    sched.set_timesteps(5)
    t = sched.timesteps[1]
    g = torch.Generator().manual_seed(3)
    latents, out = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    labels, targets = [0, 1, 2, 3], [0.05, 0.95, 0.05, 0.95]
    step = FeedbackGuidance(scorer, scale=0.05, steps=5).hook(p, sched, labels, targets)
    a = sched.alphas_cumprod[int(t)]

    def err(o):
        x0 = a.sqrt() * latents - (1 - a).sqrt() * o if v_prediction else (latents - (1 - a).sqrt() * o) / a.sqrt()
        img = (p.vae.decode(x0 / p.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        return np.abs(measured_s(scorer, img.numpy().transpose(0, 2, 3, 1), labels) - targets)

    with torch.no_grad():
        before, after = err(out), err(step(0, t, latents, out))
    assert (after < before).all(), (before, after)
    assert torch.equal(step(5, t, latents, out), out)  # past `steps`: untouched
    assert not scorer.training


def test_feedback_on_every_step_moves_outputs_towards_targets(pipe, scorer):
    labels, targets = (0, 1, 2, 3), (0.05, 0.95, 0.05, 0.95)
    kw = dict(labels=labels, s=targets, num_inference_steps=4)
    plain = run(pipe, **kw).images
    steered = run(pipe, feedback=FeedbackGuidance(scorer, scale=0.3, steps=4), **kw).images
    e0 = np.abs(measured_s(scorer, plain, labels) - targets).mean()
    e1 = np.abs(measured_s(scorer, steered, labels) - targets).mean()
    assert e1 < e0, (e0, e1)
    again = run(pipe, feedback=FeedbackGuidance(scorer, scale=0.3, steps=4), **kw).images
    np.testing.assert_array_equal(steered, again)  # deterministic


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": -1.0}, "scale"), ({"scale": float("nan")}, "scale"), ({"steps": 1.5}, "steps"), ({"steps": -1}, "steps"),
])
def test_bad_settings_are_refused(scorer, kwargs, match):
    with pytest.raises(FeedbackError, match=match):
        FeedbackGuidance(scorer, **kwargs)


def test_wrong_scheduler_or_classifier_is_refused(pipe, scorer):
    with pytest.raises(FeedbackError, match="DPM"):
        run(pipe, scheduler="euler", feedback=FeedbackGuidance(scorer))
    other = build_classifier("resnet10t", in_chans=1, num_classes=3).eval()
    with pytest.raises(FeedbackError, match="3 classes"):
        run(pipe, feedback=FeedbackGuidance(other))


def test_scheduler_options_off_alphas_cumprod_are_refused(pipe, scorer):
    sched = pipe.get_scheduler("dpm++")
    sched = type(sched).from_config(sched.config, use_karras_sigmas=True)
    with pytest.raises(FeedbackError, match="use_karras_sigmas"):
        FeedbackGuidance(scorer).hook(pipe, sched, [0], [0.5])


def test_edits_take_no_feedback_argument(pipe, scorer):
    from dacd.img2img import DifficultyControlledImg2ImgPipeline

    edit = DifficultyControlledImg2ImgPipeline.from_pipe(pipe)
    with pytest.raises(TypeError, match="feedback"):
        edit(0, 0.5, image=np.zeros((32, 32, 1), np.float32), feedback=FeedbackGuidance(scorer))


def test_recorded_model_is_one_name_however_a_folder_is_spelled(tmp_path, monkeypatch):
    """Sets record their model by dacd.defaults.recorded_model (bench/feedback.py judges a probe set
    only when it names --model; a set resumes only with the same model): a relative and an absolute
    spelling of one folder are one model, the embedded default's short name is its folder, another
    folder or a hub id is not."""
    from dacd.defaults import EMBEDDED_CHECKPOINT, REPO_ROOT, recorded_model

    (tmp_path / "ck" / "dacd").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    absolute = recorded_model(tmp_path / "ck" / "dacd")
    assert recorded_model("ck/dacd") == recorded_model("./ck/../ck/dacd") == absolute
    assert recorded_model("other") != absolute and recorded_model("org/hub-model") == "org/hub-model"
    embedded = EMBEDDED_CHECKPOINT / "dacd"
    if embedded.is_dir():
        short = recorded_model("dacd")
        assert short == recorded_model(embedded) == embedded.relative_to(REPO_ROOT).as_posix() != absolute


def test_bench_feedback_ceiling_row_keeps_the_real_images_the_committee_calls_faithful():
    """bench/feedback.py --ceiling-committee: a second real-ceiling row judges only the images every
    member ranks first as their label; with no committee, the ceiling row alone."""
    from pathlib import Path

    from conftest import load_module

    from dacd.evaluation import measure
    from dacd.generation import DifficultySpec, make_plan

    bench = load_module(Path(__file__).parents[1] / "bench" / "feedback.py")
    members = []
    for seed, arch in ((0, "resnet10t"), (1, "resnet14t")):  # heads leaning to the first class
        torch.manual_seed(seed)
        clf = build_classifier(arch, in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()
        with torch.no_grad():
            clf.model.get_classifier().weight.mul_(0.05)
            clf.model.get_classifier().bias.copy_(torch.tensor([1.1, 0.0, 0.0, 0.0]))
        members.append(clf)
    torch.manual_seed(2)
    evaluator = build_classifier("resnet10t", in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()
    plan = make_plan(CLASSES, 6, DifficultySpec(mu=0.5, sigma=0.1), seed=0)
    images = np.random.default_rng(0).integers(0, 256, (len(plan), 1, 32, 32), dtype=np.uint8)
    labels = plan.label.to_numpy()
    faithful = np.ones(len(plan), bool)
    for clf in members:
        faithful &= measure(clf, images, labels)[0].pred.to_numpy() == labels
    assert 0 < faithful.sum() < len(plan)  # the test must be able to tell the two rows apart
    alone = bench.ceiling_rows(evaluator, images, plan)
    rows = bench.ceiling_rows(evaluator, images, plan, members)

    def judged(row):  # images_per_second is NaN for judged (not generated) images
        return {k: v for k, v in row.items() if k != "images_per_second"}

    assert len(alone) == 1 and judged(rows[0]) == judged(alone[0]) and rows[0]["images"] == len(plan)
    assert rows[1]["images"] == faithful.sum()
    assert judged(rows[1]) == judged(bench.judge(rows[1]["source"], evaluator, images[faithful], plan[faithful]))
    assert rows[1]["evaluator_accuracy"] != rows[0]["evaluator_accuracy"] or rows[1]["medium_share"] != rows[0]["medium_share"]


def test_a_committee_steers_by_its_mean_s(pipe, scorer):
    """A tuple of classifiers steers by the mean of their s: one member is the classifier alone
    (bit for bit), and with two the committee's mean error falls."""
    torch.manual_seed(1)
    other = build_classifier("resnet14t", in_chans=1, num_classes=len(CLASSES), class_names=CLASSES).eval()
    labels, targets = (0, 1, 2, 3), (0.05, 0.95, 0.05, 0.95)
    kw = dict(labels=labels, s=targets, num_inference_steps=4)
    alone = run(pipe, feedback=FeedbackGuidance(scorer, scale=0.3, steps=4), **kw).images
    np.testing.assert_array_equal(run(pipe, feedback=FeedbackGuidance((scorer,), scale=0.3, steps=4), **kw).images,
                                  alone)

    def committee_error(images):
        return np.abs((measured_s(scorer, images, labels) + measured_s(other, images, labels)) / 2 - targets).mean()

    plain = run(pipe, **kw).images
    steered = run(pipe, feedback=FeedbackGuidance([scorer, other], scale=0.3, steps=4), **kw).images
    assert committee_error(steered) < committee_error(plain)
    assert not np.array_equal(steered, alone)  # the second member changes the gradient
    with pytest.raises(FeedbackError, match="at least one"):
        FeedbackGuidance(())
