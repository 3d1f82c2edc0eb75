"""DifficultyControlledPipeline: Stable Diffusion + LoRA + difficulty encoder.

Owning the denoising loop is what three-branch guidance needs:

    e = e(∅,∅) + g_t·(e(p,∅) − e(∅,∅)) + g_d·(e(p,d) − e(p,∅))

with `e(p, d)` the U-Net's prediction for prompt tokens p followed by difficulty
tokens d, and ∅ the empty prompt or the learned null-difficulty tokens. With
g_d = g_t it collapses to two-branch CFG (e(∅,∅) vs e(p,d)), a third cheaper, which
is used whenever it applies. Difficulty-only mode replaces the prompt by the empty
prompt (the sequence the model saw under text dropout), so only difficulty guides.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from peft.utils import get_peft_model_state_dict

from . import __version__
from .calibration import Calibration, CalibrationSettingsWarning, load_img2img_calibrations
from .data import resolve_class
from .defaults import LAYOUT, LIMITS, PROMPT_TEMPLATE, SAMPLING
from .encoder import DifficultyEncoder
from .sampling import check_guidance_shape
from .weights import check_folder

_TOKENIZER_LOCK = threading.Lock()

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "ddpm": DDPMScheduler,
}


@dataclass
class DifficultyPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor
    class_labels: list[int]
    difficulties: list[float]  # as requested
    conditioning_difficulties: list[float]  # what the encoder saw (differs when calibrated=True)
    prompts: list[str]


@dataclass
class _CallSetup:
    """The shared state of one pipeline call after its inputs are checked (see `_prepare_call`)."""
    n: int
    labels: list[int]
    requested: list[float]
    prompts: list[str]
    cond_s: list[float]
    device: torch.device
    scheduler: object
    branches: list
    g_text: float
    g_difficulty: float


def _is_path(ref: str) -> bool:
    """A base reference that can only be a local path (relative or absolute), never a hub id."""
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1


def _is_number(x, integer: bool = False) -> bool:
    """A finite real number (an integer if asked), not a bool or a string."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(x, kinds) and not isinstance(x, bool) and math.isfinite(float(x))


def _as_list(x, n: int | None = None) -> list:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().reshape(-1).tolist()
    elif isinstance(x, np.ndarray):
        x = x.reshape(-1).tolist()
    elif not isinstance(x, (list, tuple)):
        return [x] * (n or 1)
    return list(x)


def noise_level(sched, t) -> float:
    """sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) of the scheduler's alphas_cumprod at timestep
    `t` (the EDM noise level; very large at a zero-terminal-SNR schedule's last step, infinite where
    the scheduler leaves alpha_bar at 0 there)."""
    ab = float(sched.alphas_cumprod[int(round(float(t)))])
    return math.inf if ab <= 0 else math.sqrt((1.0 - ab) / ab)


def guided_at(sched, t, interval) -> bool:
    """Whether guidance applies at timestep `t`: always without an interval, else where
    lo < sigma(t) <= hi (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval")."""
    if interval is None:
        return True
    lo, hi = interval
    return lo < noise_level(sched, t) <= hi


def rescaled(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, section 3.4): blend the guided prediction with itself
    scaled, per image, to the conditional prediction's standard deviation; phi = 0 is plain CFG."""
    if not phi:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1.0 - phi) * guided


class DifficultyControlledPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Generate images of a class at a requested difficulty `s` in [0, 1].

    `difficulty_encoder=None` gives the baseline (LoRA only, text conditioning only).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["difficulty_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, difficulty_encoder=None,
                 class_names=None, prompt_template: str = PROMPT_TEMPLATE):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, difficulty_encoder=difficulty_encoder)
        n = difficulty_encoder.config.num_classes if difficulty_encoder is not None else None
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n or 0)]
        if n is not None and len(self.class_names) != n:
            raise ValueError(f"class_names has {len(self.class_names)} entries, the encoder knows {n} classes")
        self.prompt_template = prompt_template
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.calibration: Calibration | None = None
        self.img2img_calibrations: dict[float, Calibration] = {}  # curves for edits, by strength
        self.dacd_config: dict = {}
        self._schedulers = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_difficulty(self) -> bool:
        return self.difficulty_encoder is not None

    # ------------------------------------------------------------ prompts
    def class_id(self, c):
        """A class name (as in `class_names`, any case) -> its id; anything else is returned as is."""
        return resolve_class(c, self.class_names) if isinstance(c, str) else c

    def class_prompt(self, class_label: int) -> str:
        return self.prompt_template.format(self.class_names[class_label])

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device=None) -> torch.Tensor:
        """Text tokens (B, 77, D) from the last hidden state, as SD does."""
        device = device or self._execution_device
        with _TOKENIZER_LOCK:  # a fast tokenizer changes its padding state per call: not thread-safe
            ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device))[0].to(self.unet.dtype)

    def encode_conditions(self, text_embeds: torch.Tensor, class_labels=None, difficulty=None, *,
                          null_mask: torch.Tensor | None = None, encoder=None) -> torch.Tensor:
        """The conditioning sequence `E_text(p) ⊕ E_d(y, s)`: text tokens followed by the
        difficulty encoder's K tokens for (class, s), or by its learned null-difficulty tokens
        where `null_mask` is True (everywhere when `difficulty` is None). Without an encoder
        (the baseline), the text tokens alone. Training passes its own (possibly wrapped)
        encoder and its dropout mask; sampling uses the pipeline's."""
        enc = encoder if encoder is not None else self.difficulty_encoder
        if enc is None:
            return text_embeds
        n, device = text_embeds.shape[0], text_embeds.device
        null = getattr(enc, "module", enc).null(n)  # through a DDP wrapper in training
        if difficulty is None:
            tokens = null
        else:
            tokens = enc(torch.as_tensor(class_labels, device=device), torch.as_tensor(difficulty, device=device))
            if null_mask is not None:
                tokens = torch.where(null_mask.to(device)[:, None, None], null, tokens)
        return torch.cat([text_embeds, tokens.to(text_embeds.dtype)], 1)

    # ------------------------------------------------------------ inputs
    def check_inputs(self, class_labels, difficulty, prompt, guidance_scale, difficulty_guidance_scale,
                     num_inference_steps, difficulty_only, scheduler):
        labels = _as_list(class_labels)
        if not labels:
            raise ValueError("class_labels is empty: pass at least one class id or name")
        for c in labels:
            c = self.class_id(c)
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < self.num_classes:
                raise ValueError(f"class_labels contains {c!r}: each must be a class name or an integer class id "
                                 f"in [0, {self.num_classes - 1}] ({', '.join(self.class_names)})")
        diffs = _as_list(difficulty)
        for s in diffs:
            if not _is_number(s) or not LIMITS["difficulty"].lo <= float(s) <= LIMITS["difficulty"].hi:
                raise ValueError(f"difficulty contains {s!r}: each value must be "
                                 f"{LIMITS['difficulty'].describe()} (not NaN)")
        if len(labels) > 1 and len(diffs) > 1 and len(labels) != len(diffs):
            raise ValueError(f"class_labels has {len(labels)} entries but difficulty has {len(diffs)}: "
                             "pass one of each per image, or a single value to broadcast")
        n = max(len(labels), len(diffs))
        if prompt is not None:
            prompts = _as_list(prompt)
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a list of strings")
            if len(prompts) not in (1, n):
                raise ValueError(f"prompt has {len(prompts)} entries for {n} images: pass one or one per image")
        checks = [("guidance_scale", guidance_scale), ("num_inference_steps", num_inference_steps)]
        if difficulty_guidance_scale is not None:
            checks.append(("difficulty_guidance_scale", difficulty_guidance_scale))
        for name, value in checks:
            lim = LIMITS[name]
            if not _is_number(value, integer=lim.integer) or not lim.lo <= float(value) <= lim.hi:
                raise ValueError(f"{name} must be {lim.describe()}, got {value!r}")
        if difficulty_only and not self.has_difficulty:
            raise ValueError("difficulty_only=True needs a difficulty encoder; this pipeline has none (baseline)")
        if isinstance(scheduler, str) and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} is unknown: choose one of {sorted(SCHEDULERS)}")
        return n

    def get_scheduler(self, name: str | None):
        """A scheduler by name, built from the base's noise schedule. Each call gets its own copy:
        a scheduler keeps per-run state (timesteps, step index, past model outputs), so one shared
        instance would mix up two generations running at once in different threads (the app)."""
        if name is None:
            return copy.deepcopy(self.scheduler)
        if name not in self._schedulers:
            cls = SCHEDULERS[name]
            cfg = dict(self.scheduler.config)
            if name == "dpm++":
                cfg.update(algorithm_type="dpmsolver++", solver_order=2)
            self._schedulers[name] = cls.from_config(cfg)
        return copy.deepcopy(self._schedulers[name])

    def prepare_latents(self, batch_size, generator, latents=None, scheduler=None):
        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, size, size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} for {batch_size} images: pass one per image")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self._execution_device) * (scheduler or self.scheduler).init_noise_sigma

    # ------------------------------------------------------------ denoising steps
    def _broadcast(self, n, class_labels, difficulty, prompt, difficulty_only):
        labels = [int(self.class_id(c)) for c in _as_list(class_labels, n)]
        labels = labels * n if len(labels) == 1 else labels
        requested = [float(s) for s in _as_list(difficulty, n)]
        requested = requested * n if len(requested) == 1 else requested
        if difficulty_only:
            prompts = [""] * n
        elif prompt is None:
            prompts = [self.class_prompt(c) for c in labels]
        else:
            prompts = _as_list(prompt, n)
            prompts = prompts * n if len(prompts) == 1 else prompts
        return labels, requested, prompts

    def conditioning_difficulties(self, labels, requested, calibrated: bool) -> list[float]:
        """What the encoder is conditioned on: the request, or with `calibrated` the value whose
        images measured as requested (the checkpoint's calibration curve; measured by whatever its
        meta's `measured_by` names: the shipped curve, the mean s of the three scoring classifiers)."""
        if not calibrated:
            return list(requested)
        if self.calibration is None:
            raise ValueError("calibrated=True needs a calibration curve; this checkpoint has none "
                             "(train/calibrate.py writes calibration.json into the dacd folder)")
        return [self.calibration.invert(c, s) for c, s in zip(labels, requested)]

    def calibration_differences(self, *, guidance_scale=SAMPLING.guidance_scale,
                                difficulty_guidance_scale=SAMPLING.difficulty_guidance_scale,
                                num_inference_steps=SAMPLING.num_inference_steps, scheduler=SAMPLING.scheduler,
                                difficulty_only: bool = False, guidance_interval=None,
                                guidance_rescale: float = 0.0) -> list[str]:
        """The sampling settings that differ from those the text-to-image curve was fitted at, as
        text (empty without a curve). The curve only holds at its own settings: calibrated sampling
        elsewhere still runs, with a `CalibrationSettingsWarning` (a warning, not an error: nearby
        settings give a usable if looser dial; edits refuse another step count, because there the
        steps decide which part of the schedule is rerun)."""
        if self.calibration is None:
            return []
        if scheduler is None:  # the pipeline's own scheduler, by its name here when it has one
            scheduler = next((n for n, c in SCHEDULERS.items() if type(self.scheduler) is c),
                             type(self.scheduler).__name__)
        g_d = guidance_scale if difficulty_guidance_scale is None else difficulty_guidance_scale
        out = self.calibration.setting_differences(
            steps=num_inference_steps, scheduler=scheduler,
            guidance_scale=None if difficulty_only else guidance_scale,  # unused without the prompt
            difficulty_guidance_scale=g_d if self.has_difficulty else None)
        if difficulty_only:
            out.insert(0, "difficulty only (curve: with the class prompt)")
        if guidance_interval is not None:  # curves are fitted with plain guidance
            out.append(f"guidance interval ({guidance_interval[0]:g}, {guidance_interval[1]:g}] (curve: every step)")
        if guidance_rescale:
            out.append(f"guidance rescale {guidance_rescale:g} (curve: none)")
        return out

    def guidance_contexts(self, prompts, labels, cond_s, guidance_scale, difficulty_guidance_scale,
                          difficulty_only, mode, device) -> tuple[list[torch.Tensor], float, float]:
        """The conditioning of each guidance branch and the two scales in effect.

        Branches: 1 = conditional only, 2 = classic CFG (e(∅,∅), e(p,d)), 3 = separate text and
        difficulty scales (e(∅,∅), e(p,∅), e(p,d)); the cheapest that computes the same formula."""
        n = len(labels)
        g_t = float(guidance_scale)
        g_d = g_t if difficulty_guidance_scale is None else float(difficulty_guidance_scale)
        text = self.encode_prompt(prompts, device)
        empty = self.encode_prompt([""], device).expand(n, -1, -1)
        if self.has_difficulty:
            c_pd = self.encode_conditions(text, labels, cond_s)
            c_p0, c_00 = self.encode_conditions(text), self.encode_conditions(empty)
        else:
            c_pd = c_p0 = text
            c_00 = empty
            g_d = g_t  # no difficulty branch: plain CFG
        if difficulty_only:  # e(p,∅) = e(∅,∅): only the difficulty term remains
            g_t = g_d
        if g_t == g_d and not (mode == "three" and self.has_difficulty and not difficulty_only):
            return ([c_pd] if g_t == 1.0 else [c_00, c_pd]), g_t, g_d
        return [c_00, c_p0, c_pd], g_t, g_d

    def denoise(self, latents, sched, branches, g_t: float, g_d: float, extra: dict, timesteps=None,
                hook=None, guidance_interval=None, guidance_rescale: float = 0.0) -> torch.Tensor:
        """The sampling loop with one U-Net call per step over all branches (over `timesteps`,
        default all of the scheduler's; edits run the tail of the schedule). `hook(i, t, latents,
        model_output)` may rewrite the guided model output before each scheduler step (feedback
        guidance). `guidance_interval` and `guidance_rescale`: see `__call__`."""
        context = torch.cat(branches, 0)
        for i, t in enumerate(self.progress_bar(sched.timesteps if timesteps is None else timesteps)):
            x = sched.scale_model_input(latents, t)
            e = self.unet(torch.cat([x] * len(branches)), t, encoder_hidden_states=context, return_dict=False)[0]
            if len(branches) == 1:
                eps = e
            elif not guided_at(sched, t, guidance_interval):
                eps = e.chunk(len(branches))[-1]  # the fully conditional prediction: both scales 1
            elif len(branches) == 2:
                e00, epd = e.chunk(2)
                eps = rescaled(e00 + g_t * (epd - e00), epd, guidance_rescale)
            else:
                e00, ep0, epd = e.chunk(3)
                eps = rescaled(e00 + g_t * (ep0 - e00) + g_d * (epd - ep0), epd, guidance_rescale)
            if hook is not None:
                eps = hook(i, t, latents, eps)
            latents = sched.step(eps, t, latents, **extra, return_dict=False)[0]
        return latents

    def decode(self, latents, output_type: str):
        if output_type == "latent":
            return latents
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(decoded, output_type=output_type,
                                                do_denormalize=[True] * len(latents))

    # ------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, class_labels, difficulty=0.5, prompt=None, *, difficulty_only: bool = False,
                 calibrated: bool = False, guidance_scale: float = SAMPLING.guidance_scale,
                 difficulty_guidance_scale: float | None = SAMPLING.difficulty_guidance_scale,
                 num_inference_steps: int = SAMPLING.num_inference_steps, scheduler: str | None = SAMPLING.scheduler,
                 generator=None, latents=None, eta: float = 0.0, output_type: str = "pil",
                 guidance_branches: str = "auto", return_dict: bool = True, feedback=None,
                 guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0):
        """Generate one image per (class, difficulty) pair; scalars broadcast.

        Defaults are the project's (`dacd.defaults.SAMPLING`): text guidance 5, difficulty guidance 8.
        `difficulty_guidance_scale=None` sets it equal to `guidance_scale`, which makes the
        step plain two-branch CFG over [text ⊕ difficulty] tokens (what stock SD would do).
        `guidance_branches="three"` forces the three-branch formula even where the
        two-branch shortcut applies (for benchmarks and tests); "auto" picks the cheapest.
        `generator` may be a list (one per image): equal seeds give equal noise, which is
        how a sweep holds the noise fixed along a row. `feedback` (a `dacd.feedback.FeedbackGuidance`)
        steers the first steps with a scoring classifier's gradient towards the requested difficulty.
        `guidance_interval=(lo, hi)` applies guidance only at steps whose noise level sigma(t) is in
        (lo, hi] (elsewhere the fully conditional prediction, both scales 1); `guidance_rescale`
        phi in [0, 1] rescales the guided prediction towards the conditional one's spread. Both off
        by default (the shipped sampling).
        """
        # 1-2. check and broadcast inputs; conditioning sequences per guidance branch
        call = self._prepare_call(class_labels, difficulty, prompt, difficulty_only, calibrated, guidance_scale,
                                  difficulty_guidance_scale, num_inference_steps, scheduler, guidance_branches,
                                  shaping=(guidance_interval, guidance_rescale))
        sched = call.scheduler

        # 3. latents and timesteps
        sched.set_timesteps(num_inference_steps, device=call.device)
        latents = self.prepare_latents(call.n, generator, latents, sched)
        extra = {"eta": eta, "generator": generator} if isinstance(sched, DDIMScheduler) else {}

        # 4. denoising loop
        hook = None if feedback is None else feedback.hook(self, sched, call.labels, call.requested)
        latents = self.denoise(latents, sched, call.branches, call.g_text, call.g_difficulty, extra, hook=hook,
                               guidance_interval=guidance_interval, guidance_rescale=guidance_rescale)

        # 5. decode
        return self._finish_call(latents, call, output_type, return_dict)

    def _prepare_call(self, class_labels, difficulty, prompt, difficulty_only, calibrated, guidance_scale,
                      difficulty_guidance_scale, num_inference_steps, scheduler, guidance_branches,
                      widen=None, curve_args=(), shaping=(None, 0.0)) -> _CallSetup:
        """What every call does before its latents: check and broadcast the inputs, map requested to
        conditioning difficulties, pick the scheduler, build the guidance branches. `widen(n)` may
        raise the batch size after the shared checks (an edit with more images than labels);
        `curve_args` go to `conditioning_difficulties` (an edit's strength and step count); `shaping`:
        (guidance_interval, guidance_rescale)."""
        check_guidance_shape(*shaping)
        if guidance_branches not in ("auto", "three"):
            raise ValueError(f"guidance_branches must be 'auto' or 'three', got {guidance_branches!r}")
        n = self.check_inputs(class_labels, difficulty, prompt, guidance_scale, difficulty_guidance_scale,
                              num_inference_steps, difficulty_only, scheduler)
        if widen is not None:
            n = widen(n)
        labels, requested, prompts = self._broadcast(n, class_labels, difficulty, prompt, difficulty_only)
        cond_s = self.conditioning_difficulties(labels, requested, calibrated, *curve_args)
        if calibrated and not curve_args:  # edits use their own curves (and refuse another step count)
            diffs = self.calibration_differences(guidance_scale=guidance_scale,
                                                 difficulty_guidance_scale=difficulty_guidance_scale,
                                                 num_inference_steps=num_inference_steps, scheduler=scheduler,
                                                 difficulty_only=difficulty_only, guidance_interval=shaping[0],
                                                 guidance_rescale=shaping[1])
            if diffs:  # stacklevel: _prepare_call <- __call__ <- torch.no_grad's wrapper <- the caller
                warnings.warn("calibrated sampling at settings the calibration curve was not fitted at: "
                              + ", ".join(diffs) + ". Measured difficulty may not match the request; sample "
                              "at the curve's settings, or fit a curve at these (train/calibrate.py)",
                              CalibrationSettingsWarning, stacklevel=4)
        device = self._execution_device
        sched = self.get_scheduler(scheduler)
        branches, g_t, g_d = self.guidance_contexts(prompts, labels, cond_s, guidance_scale,
                                                    difficulty_guidance_scale, difficulty_only, guidance_branches,
                                                    device)
        return _CallSetup(n, labels, requested, prompts, cond_s, device, sched, branches, g_t, g_d)

    def _finish_call(self, latents, call: _CallSetup, output_type: str, return_dict: bool):
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, call.labels, call.requested
        return DifficultyPipelineOutput(images=images, class_labels=call.labels, difficulties=call.requested,
                                        conditioning_difficulties=call.cond_s, prompts=call.prompts)

    # ------------------------------------------------------------ save / load
    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """A pipeline of this class over `pipeline`'s components (no new weights; a LoRA already
        loaded stays loaded), carrying its class names, prompt template, calibration curves and
        dacd config across. `pipeline` may also be a stock `StableDiffusionPipeline` (then pass
        `class_names`)."""
        expected, _ = cls._get_signature_keys(cls)
        for name, component in pipeline.components.items():  # by name: __init__ has no type hints to match
            if name in expected:
                kwargs.setdefault(name, component)
        # diffusers casts the new pipeline to `dtype` (float32 unless given), and the weights are shared:
        # keep the original's dtype, or an fp16 pipeline would turn fp32 under its other users
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = pipeline.dtype
        kwargs.setdefault("class_names", getattr(pipeline, "class_names", None))
        kwargs.setdefault("prompt_template", getattr(pipeline, "prompt_template", PROMPT_TEMPLATE))
        new = super().from_pipe(pipeline, **kwargs)
        new.calibration = getattr(pipeline, "calibration", None)
        new.img2img_calibrations = dict(getattr(pipeline, "img2img_calibrations", {}))
        new.dacd_config = dict(getattr(pipeline, "dacd_config", {}))
        if hasattr(pipeline, "_progress_bar_config"):  # e.g. disabled by the caller: stays disabled
            new.set_progress_bar_config(**pipeline._progress_bar_config)
        return new

    def save_pretrained(self, save_directory, base: str | None = None, lora_config: dict | None = None,
                        **kwargs):
        """Write `dacd_config.json`, the LoRA (diffusers format, with adapter metadata) and
        `difficulty_encoder/`. The base is referenced, not copied: a relative path for a
        local folder, or a hub id."""
        if kwargs:
            raise TypeError(f"save_pretrained got unexpected arguments {sorted(kwargs)}: it takes save_directory, "
                            "base and lora_config")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        base = base or self.dacd_config.get("base_resolved") or self.dacd_config.get("base")
        if base is None:
            raise ValueError("save_pretrained needs `base`: the SD folder or hub id this model was trained on")
        base_ref = os.path.relpath(base, folder) if Path(base).exists() else base
        has_lora = getattr(self.unet, "peft_config", None) and "default" in self.unet.peft_config
        if has_lora:
            meta = self.unet.peft_config["default"].to_dict()
            self.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(self.unet),
                                   unet_lora_adapter_metadata=meta, weight_name=LAYOUT.lora_weights)
            lora_config = lora_config or {"rank": meta["r"], "alpha": meta["lora_alpha"],
                                          "target_modules": sorted(meta["target_modules"])}
        if self.has_difficulty:
            self.difficulty_encoder.save_pretrained(folder / LAYOUT.encoder)
        config = {
            "base": base_ref,
            "lora": lora_config if has_lora else None,
            "difficulty_encoder": self.has_difficulty,
            "class_names": self.class_names,
            "prompt_template": self.prompt_template,
            "dacd_version": __version__,
        }
        config.update({k: v for k, v in self.dacd_config.items()
                       if k not in config and k not in ("base_resolved",)})
        (folder / LAYOUT.dacd_config).write_text(json.dumps(config, indent=2) + "\n")
        if self.calibration is not None:
            self.calibration.save(folder)

    @classmethod
    def from_pretrained(cls, folder, base: str | None = None, dtype=None, device=None, torch_dtype=None, **kwargs):
        """Load base + LoRA + encoder (+ calibration) from a dacd folder. `base` overrides
        the base named in dacd_config.json (e.g. a local copy of a hub model)."""
        if kwargs:
            raise TypeError(f"from_pretrained got unexpected arguments {sorted(kwargs)}: it takes folder, base, "
                            "dtype (or torch_dtype) and device")
        dtype = dtype or torch_dtype
        folder = Path(folder)
        cfg_path = folder / LAYOUT.dacd_config
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: {folder} is not a dacd folder "
                                    "(train one with train/train_dacd.py, or run `make checkpoints`)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e}); restore it or retrain") from e
        base_ref = base or config.get("base")
        if not base_ref:
            raise ValueError(f"{cfg_path} names no base model; pass base=... or fix the file")
        local = (folder / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
        if local.exists():
            base_path = str(local.resolve())
            check_folder(local)
        elif _is_path(base_ref):
            raise FileNotFoundError(
                f"the base model {base_ref!r} named in {cfg_path} is missing: expected the folder {local}. A dacd "
                "folder reuses the base folder beside it (the checkpoint layout: base/ next to dacd/); copy the "
                "whole checkpoint folder, or pass base=... (--base) pointing at the base model")
        else:
            base_path = base_ref
        check_folder(folder)
        try:
            sd = StableDiffusionPipeline.from_pretrained(base_path, safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False, dtype=dtype)
        except (OSError, ValueError, EnvironmentError) as e:
            raise OSError(f"cannot load the base model {base_path!r} named in {cfg_path} ({e}). "
                          "Check the path, or the hub id and network (HF_HUB_OFFLINE=1 blocks downloads).") from e
        encoder = None
        if config.get("difficulty_encoder"):
            enc_dir = folder / LAYOUT.encoder
            if not enc_dir.is_dir():
                raise FileNotFoundError(f"{enc_dir} is missing but {cfg_path} says the model has a difficulty encoder")
            encoder = DifficultyEncoder.from_pretrained(enc_dir, dtype=dtype)
        pipe = cls(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                   scheduler=sd.scheduler, difficulty_encoder=encoder, class_names=config.get("class_names"),
                   prompt_template=config.get("prompt_template", PROMPT_TEMPLATE))
        if config.get("lora"):
            lora_path = folder / LAYOUT.lora_weights
            if not lora_path.is_file():
                raise FileNotFoundError(f"{lora_path} is missing but {cfg_path} describes a LoRA")
            pipe.load_lora_weights(str(folder), weight_name=LAYOUT.lora_weights, adapter_name="default")
        pipe.calibration = Calibration.load(folder)
        pipe.img2img_calibrations = load_img2img_calibrations(folder)
        pipe.dacd_config = dict(config, base_resolved=base_path, folder=str(folder))
        if device is not None:
            pipe.to(device)
        return pipe
