"""Feedback guidance: steer the first denoising steps with a scoring classifier's gradient.

The idea of "Feedback-guided data synthesis" (arXiv 2310.00158), aimed at difficulty: at each of
the first `steps` denoising steps the model's prediction of the clean latent x0 is decoded by the
VAE, the scoring classifier measures s = 1 - p(label) of that image, and x0 moves down the
gradient of (s - s_target)^2 before the scheduler step (the model output is rewritten to match
the moved x0, so any scheduler that works on alphas_cumprod takes it as is). Later steps run
unguided and clean up what the gradient left.

`scorer` may be a committee (a tuple of classifiers): s is then the mean of the members' s, the
measure pooled selection matches with, and the gradient is that mean's. On pools of the shipped
dacd it did not help (bench/results/mupool-v/probe50-d1-c3-fb: the steered sets' medium share and
label accuracy both fell).

The step is normalised per image: x0 <- x0 - scale * (s - s_target) * g / rms(g), g = ds/dx0, so
`scale` is in the units of the scaled latents, which have about unit spread (0.5 moves an image
whose s is 0.4 off its target by 0.2 rms), whatever the steepness of the classifier.

    from dacd.feedback import FeedbackGuidance
    fb = FeedbackGuidance(scorer, scale=0.5, steps=5)
    out = pipe([3, 3], 0.5, feedback=fb)

The difficulty target of each image is the difficulty *requested* (not the conditioning value a
calibration curve maps it to). This is one of the two ways the selection issue asked to compare;
`bench/feedback.py` measures it next to selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

# schedulers whose latents are x_t = sqrt(a) x0 + sqrt(1 - a) eps (Euler's are x0 + sigma eps)
VP_SCHEDULERS = (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler)


class FeedbackError(ValueError):
    pass


@dataclass(frozen=True)
class FeedbackGuidance:
    """`scorer`: a `dacd.classifier.Classifier` (float images in [0, 1], the pipeline's channels), or
    a tuple of them (a committee: their mean s steers);
    `scale`: the step on x0, in latent rms per unit of difficulty error; `steps`: how many of the
    first denoising steps are steered (the rest run as usual)."""

    scorer: nn.Module | tuple[nn.Module, ...]
    scale: float = 0.5
    steps: int = 5

    def __post_init__(self):
        if isinstance(self.scorer, (tuple, list)):
            if not self.scorer:
                raise FeedbackError("a feedback committee needs at least one classifier")
            object.__setattr__(self, "scorer", tuple(self.scorer))
        if not (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
                and torch.isfinite(torch.tensor(float(self.scale))) and self.scale >= 0):
            raise FeedbackError(f"feedback scale must be a finite number >= 0, got {self.scale!r}")
        if not (isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 0):
            raise FeedbackError(f"feedback steps must be an integer >= 0, got {self.steps!r}")

    def check(self, pipe, sched) -> str:
        """Refuse a scheduler, model or classifier that feedback cannot steer; returns the
        model's prediction type."""
        if not isinstance(sched, VP_SCHEDULERS):
            raise FeedbackError(f"feedback guidance runs with the DDIM, DPM++ or DDPM scheduler, not "
                                f"{type(sched).__name__}: pass scheduler='dpm++'")
        kind = sched.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise FeedbackError(f"feedback guidance supports epsilon and v_prediction models, not {kind!r}")
        odd = [k for k in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
                           "use_flow_sigmas") if sched.config.get(k)]
        if odd or str(sched.config.get("variance_type", "")).startswith("learned"):
            raise FeedbackError(f"feedback guidance needs the scheduler's own alphas_cumprod noise levels; this one "
                                f"sets {odd or 'a learned variance'}")
        for member in self.members:
            n_cls = getattr(getattr(member, "config", None), "num_classes", None)
            if n_cls is not None and n_cls != len(pipe.class_names):
                raise FeedbackError(f"the feedback classifier knows {n_cls} classes, the model {len(pipe.class_names)}")
        return kind

    @property
    def members(self) -> tuple[nn.Module, ...]:
        """The classifiers whose mean s steers (one, or a committee)."""
        return self.scorer if isinstance(self.scorer, tuple) else (self.scorer,)

    def hook(self, pipe, sched, labels, targets):
        """A per-step function `(i, t, latents, model_output) -> model_output` for `pipe.denoise`."""
        kind = self.check(pipe, sched)
        # each member may sit on another device or dtype than the pipeline: its labels live beside it
        members = [(m, next(m.parameters()), torch.as_tensor(labels, device=next(m.parameters()).device))
                   for m in self.members]
        target = torch.as_tensor(targets, dtype=torch.float32)
        alphas = sched.alphas_cumprod.double()
        sf = pipe.vae.config.scaling_factor

        def step(i, t, latents, out):
            if i >= self.steps or self.scale == 0:
                return out
            a = float(alphas[int(t)])
            sa, so = a ** 0.5, (1 - a) ** 0.5
            lat, o = latents.float(), out.float()  # float32 arithmetic: dividing by sqrt(a) magnifies fp16 rounding
            x0 = (lat - so * o) / sa if kind == "epsilon" else sa * lat - so * o
            was_training = [m.training for m, _, _ in members]
            for m, _, _ in members:
                m.eval()
            try:
                with torch.enable_grad():
                    x = x0.detach().requires_grad_(True)
                    img = (pipe.vae.decode(x.to(pipe.vae.dtype) / sf, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
                    s = 0.0
                    for m, w, y in members:
                        p = torch.softmax(m(img.to(w.device, w.dtype)).float(), -1)
                        s = s + (1 - p[torch.arange(len(y), device=w.device), y]).to(x.device) / len(members)
                    (grad,) = torch.autograd.grad(s.sum(), x)  # images are independent: per-image ds/dx0
            finally:
                for (m, _, _), was in zip(members, was_training):
                    m.train(was)
            rms = grad.pow(2).mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt().clamp_min(1e-12)
            err = (s.detach() - target.to(grad.device)).view(-1, *[1] * (grad.ndim - 1))
            x0 = x0 - self.scale * err * grad / rms
            # the output that the moved x0 implies at this x_t
            new = (lat - sa * x0) / so if kind == "epsilon" else (sa * lat - x0) / so
            return new.to(out.dtype)

        return step


__all__ = ["FeedbackError", "FeedbackGuidance"]
