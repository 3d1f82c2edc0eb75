"""One seeded, chunked sampler for the app, synthetic sets and the benchmarks.

Every image is a row: class, requested difficulty, seed (and optionally a prompt and a source
image). A row's noise comes from its own `torch.Generator` seeded with the row's seed, so an
image does not depend on which other rows share its chunk, and the same seed along a row of a
sweep holds the noise fixed.

Two kinds of work plug in here:

* a per-row **source image** (`sources`), passed to pipelines that take `image=` (difficulty
  edits of real images, img2img);
* a per-row **accept/retry** step (`accept`, `max_tries`): try k of a row is seeded from
  (row seed, k) by `try_seed`, a rejected row is tried again up to `max_tries`, and at the cap
  the try nearest to acceptance is kept and marked not accepted. Try 0 uses the row's own seed,
  so `max_tries=1` is plain sampling.
"""

from __future__ import annotations

import contextvars
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .defaults import SAMPLING


def check_guidance_shape(guidance_interval, guidance_rescale) -> None:
    """Clear errors for the two optional guidance-shaping settings (see `DifficultyControlledPipeline`)."""

    def number(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and not math.isnan(v)

    if guidance_interval is not None:
        iv = list(guidance_interval) if isinstance(guidance_interval, (list, tuple, np.ndarray)) else [guidance_interval]
        if len(iv) != 2 or not all(map(number, iv)) or not 0 <= iv[0] < iv[1]:
            raise ValueError(f"guidance_interval must be None or (lo, hi) noise levels with 0 <= lo < hi "
                             f"(hi may be inf), got {guidance_interval!r}")
    if not number(guidance_rescale) or not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ValueError(f"guidance_rescale must be a number in [0, 1] (0: off), got {guidance_rescale!r}")


@dataclass
class SamplingSettings:
    """How images are sampled; None takes the project default (`dacd.defaults.SAMPLING`)."""

    num_inference_steps: int | None = None
    scheduler: str | None = None
    guidance_scale: float | None = None
    difficulty_guidance_scale: float | None = None
    calibrated: bool = False
    # guidance shaping (the pipeline's `guidance_interval`, `guidance_rescale`); off by default
    guidance_interval: tuple[float, float] | None = None
    guidance_rescale: float = 0.0

    def __post_init__(self):
        for name in ("num_inference_steps", "scheduler", "guidance_scale", "difficulty_guidance_scale"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(SAMPLING, name))
        check_guidance_shape(self.guidance_interval, self.guidance_rescale)
        if self.guidance_interval is not None:
            self.guidance_interval = tuple(float(v) for v in self.guidance_interval)
        self.guidance_rescale = float(self.guidance_rescale)  # 1 and 1.0: one identity

    def as_config(self) -> dict:
        """The settings as a JSON-able dict: what sets, caches and views record as their sampling.
        The guidance-shaping fields appear only when set, so the identity of everything made
        before they existed stays the same."""
        d = asdict(self)
        if d["guidance_interval"] is None:
            del d["guidance_interval"]
        else:
            d["guidance_interval"] = list(d["guidance_interval"])
        if not d["guidance_rescale"]:
            del d["guidance_rescale"]
        return d

    def pipeline_kwargs(self, has_difficulty: bool) -> dict:
        """Keyword arguments for the pipeline; a model without a difficulty encoder (the baseline)
        gets only what applies to it."""
        kw = {k: v for k, v in asdict(self).items() if v is not None}
        if not kw["guidance_rescale"]:
            del kw["guidance_rescale"]
        if not has_difficulty:
            for k in ("difficulty_guidance_scale", "calibrated"):
                kw.pop(k, None)
        elif not self.calibrated:
            kw.pop("calibrated", None)
        return kw


def seed_from(*parts: int) -> int:
    """A noise seed in [0, 2**31) that depends only on `parts` (plan rows, tries)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def try_seed(seed: int, k: int) -> int:
    """The noise seed of try k of a row whose seed is `seed` (try 0 is the row's own seed)."""
    return int(seed) if k == 0 else seed_from(seed, k)


@dataclass
class Samples:
    """What `sample` returns, one entry per row, in row order."""

    images: np.ndarray  # float (N, H, W, C) in [0, 1]
    conditioning_s: list[float]  # what the encoder saw (differs from the request when calibrated)
    tries: np.ndarray  # tries made per row (1 = the first)
    accepted: np.ndarray  # bool; always True without an accept step
    distance: np.ndarray  # accept's distance of the kept try (0 without an accept step)


# accept(images (n, H, W, C) float, row indices) -> (accepted bool (n,), distance float (n,)):
# the rows' images of one try; a smaller distance is nearer to acceptance.
AcceptFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _run_pipe(pipe, labels, difficulties, seeds, settings, prompts, sources, extra):
    kw = dict(settings.pipeline_kwargs(pipe.has_difficulty), **extra)
    if not pipe.has_difficulty:
        kw.pop("difficulty_only", None)
    if prompts is not None:
        kw["prompt"] = list(prompts)
    if sources is not None:
        kw["image"] = list(sources)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    res = pipe([int(c) for c in labels], [float(s) for s in difficulties], generator=gens, output_type="np", **kw)
    cond = getattr(res, "conditioning_difficulties", None) or [float(s) for s in difficulties]
    return np.asarray(res.images), list(cond)


def sample(pipe, labels, difficulties, seeds, settings: SamplingSettings | None = None, *, prompts=None,
           sources=None, chunk_size: int = 32, accept: AcceptFn | None = None, max_tries: int = 1,
           progress: Callable[[float, str], None] | None = None, desc: str = "sampling", workers: int = 1,
           **pipe_kwargs) -> Samples:
    """Generate one image per row in chunks of `chunk_size`, one generator per image.

    `pipe_kwargs` go to the pipeline as they are (e.g. `difficulty_only=True`; dropped for a
    model without a difficulty encoder). `progress(fraction, desc)` is called before each chunk
    and at the end. `workers` > 1 runs chunks in that many threads at once (chunks shrink so that
    each worker gets one): with torch at one thread each, this uses several cores without torch's
    thread-pool barriers, which collapse when another process competes for the cores (the app).
    Then `progress` and `accept` may be called from several threads at once (progress under a
    lock; each in the caller's context variables).
    """
    labels, difficulties, seeds = list(labels), list(difficulties), [int(s) for s in seeds]
    n = len(labels)
    if n == 0:
        raise ValueError("nothing to sample: pass at least one row")
    if not (len(difficulties) == len(seeds) == n):
        raise ValueError(f"labels, difficulties and seeds must have one entry per row: got {n}, "
                         f"{len(difficulties)} and {len(seeds)}")
    for name, per_row in (("prompts", prompts), ("sources", sources)):
        if per_row is not None and len(per_row) != n:
            raise ValueError(f"{name} must have one entry per row ({n}), got {len(per_row)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    settings = settings or SamplingSettings()
    if workers > 1:
        chunk_size = min(chunk_size, -(-n // workers))

    def run(rows: np.ndarray, k: int):
        return _run_pipe(pipe, [labels[i] for i in rows], [difficulties[i] for i in rows],
                         [try_seed(seeds[i], k) for i in rows],
                         settings, None if prompts is None else [prompts[i] for i in rows],
                         None if sources is None else [sources[i] for i in rows], pipe_kwargs)

    images, cond = [None] * n, [0.0] * n
    tries, accepted, distance = np.zeros(n, int), np.zeros(n, bool), np.full(n, np.inf)
    done, lock = [0], threading.Lock()

    def chunk(start: int) -> None:  # fills rows start..start+chunk_size-1 (no two chunks share a row)
        if progress is not None:
            with lock:
                progress(done[0] / n, desc)
        todo = np.arange(start, min(n, start + chunk_size))
        for k in range(max_tries):
            imgs, c = run(todo, k)
            tries[todo] = k + 1
            if accept is None:
                ok, dist = np.ones(len(todo), bool), np.zeros(len(todo))
            else:
                ok, dist = (np.asarray(v) for v in accept(imgs, todo))
            for j, i in enumerate(todo):
                if images[i] is None or ok[j] or dist[j] < distance[i]:
                    images[i], cond[i], accepted[i], distance[i] = imgs[j], c[j], bool(ok[j]), float(dist[j])
            todo = todo[~ok]
            if not len(todo):
                break
        with lock:
            done[0] += min(n, start + chunk_size) - start

    starts = range(0, n, chunk_size)
    if workers > 1 and len(starts) > 1:
        # each chunk runs in a copy of the caller's context, so context-bound callbacks (Gradio's
        # progress bar finds its event through context variables) work from the worker threads
        contexts = [contextvars.copy_context() for _ in starts]
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            list(pool.map(lambda ctx, start: ctx.run(chunk, start), contexts, starts))  # re-raises errors
    else:
        for start in starts:
            chunk(start)
    if progress is not None:
        progress(1.0, desc)
    return Samples(np.stack(images), cond, tries, accepted, distance)
