"""The shared sampler: one generator per row, chunking, per-row prompts, accept/retry."""

import numpy as np
import pytest
from test_pipeline import dummy_pipeline

from dacd.sampling import SamplingSettings, sample, try_seed

FAST = SamplingSettings(num_inference_steps=2, scheduler="ddim", guidance_scale=2.0, difficulty_guidance_scale=3.0)


@pytest.fixture(scope="module")
def pipe():
    return dummy_pipeline()


def test_rows_do_not_depend_on_their_chunk(pipe):
    labels, s, seeds = [0, 1, 2, 3, 0], [0.1, 0.3, 0.5, 0.7, 0.9], [5, 6, 7, 8, 5]
    a = sample(pipe, labels, s, seeds, FAST, chunk_size=5)
    b = sample(pipe, labels, s, seeds, FAST, chunk_size=2)
    assert a.images.shape == (5, 32, 32, 1)
    np.testing.assert_allclose(a.images, b.images, atol=1e-5)
    c = sample(pipe, labels[:1], s[:1], seeds[:1], FAST)  # a row alone: the same image
    np.testing.assert_allclose(c.images[0], a.images[0], atol=1e-5)
    assert not np.allclose(a.images[0], a.images[4], atol=1e-3)  # same seed, other difficulty
    assert (a.tries == 1).all() and a.accepted.all() and a.conditioning_s == pytest.approx(s)


def test_baseline_gets_only_what_applies(pipe):
    base = dummy_pipeline(with_encoder=False)
    out = sample(base, [0, 1], [0.2, 0.8], [1, 2], SamplingSettings(2, "ddim", 2.0, 7.0), difficulty_only=True)
    assert out.images.shape == (2, 32, 32, 1)


def test_guidance_shaping_reaches_the_pipeline_and_keeps_old_identities(pipe):
    from dataclasses import asdict

    plain = SamplingSettings(2, "ddim", 2.0, 3.0)
    old_keys = {"num_inference_steps", "scheduler", "guidance_scale", "difficulty_guidance_scale", "calibrated"}
    assert plain.as_config() == {k: v for k, v in asdict(plain).items() if k in old_keys}  # as recorded before
    shaped = SamplingSettings(2, "ddim", 2.0, 3.0, guidance_interval=[0.5, 3], guidance_rescale=0.5)
    assert shaped.as_config()["guidance_interval"] == [0.5, 3.0] and shaped.as_config()["guidance_rescale"] == 0.5
    assert shaped.pipeline_kwargs(True)["guidance_interval"] == (0.5, 3.0)
    assert SamplingSettings(guidance_rescale=1).as_config() == SamplingSettings(guidance_rescale=1.0).as_config()
    a = sample(pipe, [0, 1], [0.2, 0.8], [1, 2], plain)
    b = sample(pipe, [0, 1], [0.2, 0.8], [1, 2], shaped)
    assert np.abs(a.images - b.images).max() > 1e-4
    for bad in (dict(guidance_interval=2.0), dict(guidance_interval=(3, 1)), dict(guidance_rescale=2)):
        with pytest.raises(ValueError, match=next(iter(bad))):  # refused when the settings are made
            SamplingSettings(**bad)


def test_per_row_prompts_and_progress(pipe):
    calls = []
    out = sample(pipe, [0, 0], [0.5, 0.5], [3, 3], FAST, prompts=["a photo of a T-shirt/top", ""], chunk_size=1,
                 progress=lambda f, d: calls.append((f, d)))
    assert not np.allclose(out.images[0], out.images[1], atol=1e-3)  # same noise, other prompt
    assert calls == [(0.0, "sampling"), (0.5, "sampling"), (1.0, "sampling")]
    with pytest.raises(ValueError, match="one entry per row"):
        sample(pipe, [0, 0], [0.5, 0.5], [3, 3], FAST, prompts=["x"])


def test_try_seed():
    assert try_seed(123, 0) == 123
    assert try_seed(123, 1) == try_seed(123, 1) != try_seed(123, 2) != try_seed(124, 1)
    assert 0 <= try_seed(2**31 - 1, 5) < 2**31


def test_accept_retry_seeds_each_try_and_keeps_the_nearest(pipe):
    seen = []

    def accept(images, rows):
        seen.append(list(rows))
        k = len(seen) - 1  # the try number of this call (one chunk)
        ok = np.array([k == 2 and r == 0 for r in rows])  # row 0 passes at try 3, row 1 never
        return ok, np.array([10.0 - k if r == 1 else 1.0 for r in rows])  # row 1 gets nearer each try

    out = sample(pipe, [0, 1], [0.4, 0.6], [11, 12], FAST, accept=accept, max_tries=4)
    assert seen == [[0, 1], [0, 1], [0, 1], [1]]
    assert list(out.tries) == [3, 4] and list(out.accepted) == [True, False]
    assert out.distance[1] == 7.0  # the last, nearest try of row 1 is kept
    # the kept images are those of the tries' seeds
    row0 = sample(pipe, [0], [0.4], [try_seed(11, 2)], FAST)
    row1 = sample(pipe, [1], [0.6], [try_seed(12, 3)], FAST)
    np.testing.assert_allclose(out.images[0], row0.images[0], atol=1e-5)
    np.testing.assert_allclose(out.images[1], row1.images[0], atol=1e-5)


def test_workers_give_the_rows_of_one_worker(pipe):
    import contextvars

    import torch

    labels, s, seeds = [0, 1, 2, 3, 0, 1, 2], [0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9], list(range(20, 27))
    one = sample(pipe, labels, s, seeds, FAST)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    event = contextvars.ContextVar("event", default=None)  # how Gradio's progress bar finds its event
    event.set("mine")
    try:
        calls = []
        many = sample(pipe, labels, s, seeds, FAST, workers=3, progress=lambda f, d: calls.append((f, event.get())))
    finally:
        torch.set_num_threads(threads)
    assert {e for _, e in calls} == {"mine"}  # every call, from every worker, sees the caller's context
    calls = [f for f, _ in calls]
    np.testing.assert_allclose(many.images, one.images, atol=1e-5)
    assert many.conditioning_s == pytest.approx(one.conditioning_s)
    assert len(calls) == 3 + 1 and calls[-1] == 1.0 and all(0 <= f <= 1 for f in calls)  # 3 chunks of <= 3 rows
    with pytest.raises(ValueError, match="workers"):
        sample(pipe, labels, s, seeds, FAST, workers=0)
