"""Difficulty edits of real images: `DifficultyControlledImg2ImgPipeline`.

The text-to-image pipeline's components and guidance, started from an image instead of pure
noise (SDEdit, as diffusers' `StableDiffusionImg2ImgPipeline`): the image is encoded by the VAE,
noised to the timestep that `strength` names and denoised with the class and difficulty
conditioning. `strength` is the share of the denoising schedule that is rerun, in whole steps:
int(steps x strength) of `num_inference_steps` (at 15 steps, 0.5 reruns 7); near 1.0 almost nothing
of the image survives. The same generator gives the same noise, so one item edited at several
difficulties with one seed shows what the dial changes on *that* item.

    pipe = DifficultyControlledPipeline.from_pretrained("checkpoints/fashion-mnist/dacd")
    edit = DifficultyControlledImg2ImgPipeline.from_pipe(pipe)
    out = edit("Shirt", difficulty=0.8, image=image, strength=0.5, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from .data import MAX_IMAGE_BYTES, load_image
from .defaults import EDIT_STRENGTH, SAMPLING
from .pipeline import DifficultyControlledPipeline, _is_number

DEFAULT_STRENGTH = EDIT_STRENGTH  # chosen by bench/edits.py (see dacd.defaults)


def _to_hwc_float(image) -> np.ndarray:
    """PIL, array (HW / HWC, uint8 0..255 or float 0..1) or tensor (CHW, float 0..1) -> float HWC in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image) and image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float greyscale (convert("RGB") would clip it at 255): scaled by the range it uses
        a = np.asarray(image, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("image contains NaN or infinite values")
        top = 65535.0 if image.mode.startswith("I;16") else next(
            r for r in (1.0, 255.0, 65535.0, float(a.max())) if a.max() <= r)
        return np.clip(a / top, 0, 1)[..., None]
    if isinstance(image, Image.Image):
        im = image.convert("RGBA") if image.mode in ("P", "LA", "PA") else image
        if im.mode == "RGBA":  # transparent pixels over black, the datasets' background
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im).convert("RGB")
        elif im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        a = np.asarray(im, dtype=np.float64) / 255.0
        return a[..., None] if a.ndim == 2 else a
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().float()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(f"image tensor must be (C, H, W) with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
        a = t.permute(1, 2, 0).numpy().astype(np.float64)
    elif isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image array must be (H, W) or (H, W, C) with 1, 3 or 4 channels, got shape {a.shape}")
        a = a.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    else:
        raise ValueError(f"image must be a PIL image, a numpy array, a torch tensor or a file path, "
                         f"got {type(image).__name__}")
    if a.shape[-1] == 4:
        a = a[..., :3] * a[..., 3:]  # alpha over black
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ValueError(f"image values must be in [0, 1] (floats) or 0..255 (uint8), got {a.min():.3g}..{a.max():.3g}")
    return np.clip(a, 0, 1)


def prepare_image(image, size: int, channels: int) -> np.ndarray:
    """Any accepted image -> float (channels, size, size) in [0, 1].

    Colour becomes greyscale for a one-channel model (ITU-R 601 luma, as PIL's "L"); an image
    of another size is resized with its aspect kept to fit `size` and centred on a `size` x
    `size` canvas of its background value (the median of its border pixels)."""
    a = _to_hwc_float(image)
    if channels == 1 and a.shape[-1] == 3:
        a = (a @ np.array([0.299, 0.587, 0.114]))[..., None]
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    h, w = a.shape[:2]
    if (h, w) != (size, size):
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        planes = [np.asarray(Image.fromarray(a[..., c].astype(np.float32), "F").resize((nw, nh), Image.BICUBIC))
                  for c in range(a.shape[-1])]
        a = np.clip(np.stack(planes, -1), 0, 1)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        canvas = np.empty((size, size, a.shape[-1]))
        canvas[:] = np.median(border, axis=0)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top:top + nh, left:left + nw] = a
        a = canvas
    return a.transpose(2, 0, 1).astype(np.float32)


class DifficultyControlledImg2ImgPipeline(DifficultyControlledPipeline):
    """Edit images towards a class and a requested difficulty `s` (see the module docstring).

    The same components as `DifficultyControlledPipeline`; build it with `from_pipe(pipe)` (no
    new weights) or `from_pretrained(dacd_folder)`."""

    def check_image_inputs(self, image, n: int, strength, num_inference_steps) -> list[np.ndarray]:
        """The images as float (C, H, W) arrays at the model's size; a ValueError naming the
        argument for a missing or unreadable image, a bad count, or a bad strength."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if image is None or not images or any(im is None for im in images):
            raise ValueError("image is missing: pass the image to edit (PIL, array, tensor or file path)")
        if n > 1 and len(images) > 1 and len(images) != n:
            raise ValueError(f"image has {len(images)} entries for {n} edits: pass one, or one per edit")
        if not _is_number(strength) or not 0 < float(strength) <= 1:
            raise ValueError(f"strength must be a number in (0, 1] (0 would leave the image as it is), got {strength!r}")
        if _is_number(num_inference_steps, integer=True) and int(num_inference_steps) * float(strength) < 1 - 1e-9:
            raise ValueError(f"strength x num_inference_steps must be at least 1 (one denoising step), got "
                             f"{strength} x {num_inference_steps}: raise one of them")
        size = self.unet.config.sample_size * self.vae_scale_factor
        prepared = []
        for i, im in enumerate(images):
            try:
                prepared.append(prepare_image(im, size, self.vae.config.in_channels))
            except ValueError as e:
                raise ValueError(f"image{'' if len(images) == 1 else f' {i}'}: {e}") from e
        return prepared

    @staticmethod
    def steps_rerun(strength: float, num_inference_steps: int) -> int:
        """How many of `num_inference_steps` denoising steps an edit at `strength` reruns (whole steps)."""
        return min(int(num_inference_steps * float(strength) + 1e-9), int(num_inference_steps))

    def conditioning_difficulties(self, labels, requested, calibrated: bool, strength: float | None = None,
                                  num_inference_steps: int | None = None):
        if not calibrated:
            return list(requested)
        curve = self.img2img_calibrations.get(round(float(strength), 6)) if strength is not None else None
        if curve is None:
            have = sorted(self.img2img_calibrations)
            raise ValueError(f"calibrated=True for edits needs a curve fitted for img2img at strength {strength:g}; "
                             + (f"this checkpoint has curves for strengths {have}" if have else
                                "this checkpoint has none")
                             + " (the text-to-image curve does not apply to edits). Fit one with "
                               f"`python train/calibrate.py --img2img-strength {strength:g}`, or pass calibrated=False")
        fitted = curve.meta.get("steps")
        if fitted is not None and num_inference_steps is not None and int(fitted) != int(num_inference_steps):
            raise ValueError(f"the img2img curve for strength {strength:g} was fitted at {fitted} steps; an edit at "
                             f"{num_inference_steps} steps reruns another share of the schedule: use {fitted} steps, "
                             "or pass calibrated=False")
        return [curve.invert(c, s) for c, s in zip(labels, requested)]

    @torch.no_grad()
    def encode_images(self, arrays: list[np.ndarray], n: int) -> torch.Tensor:
        """Prepared images -> scaled VAE latents (the posterior mean: deterministic)."""
        arrays = arrays * n if len(arrays) == 1 else arrays
        x = torch.from_numpy(np.stack(arrays)).to(self._execution_device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(self, class_labels, difficulty=0.5, prompt=None, *, image=None, strength: float = DEFAULT_STRENGTH,
                 difficulty_only: bool = False, calibrated: bool = False,
                 guidance_scale: float = SAMPLING.guidance_scale,
                 difficulty_guidance_scale: float | None = SAMPLING.difficulty_guidance_scale,
                 num_inference_steps: int = SAMPLING.num_inference_steps, scheduler: str | None = SAMPLING.scheduler,
                 generator=None, eta: float = 0.0, output_type: str = "pil", guidance_branches: str = "auto",
                 return_dict: bool = True, guidance_interval: tuple[float, float] | None = None,
                 guidance_rescale: float = 0.0):
        """Edit `image` (one, or one per edit) towards class `class_labels` at difficulty `difficulty`
        (arguments in the order of the text-to-image pipeline, `image` by keyword as in diffusers).

        `strength` in (0, 1]: the share of the denoising schedule that is rerun (the image is
        noised to that point first). Everything else as in `DifficultyControlledPipeline.__call__`;
        `calibrated=True` needs a curve fitted for edits at this strength."""
        images = []

        def widen(n):  # the image checks need the label count; an edit may have more images than labels
            images.extend(self.check_image_inputs(image, n, strength, num_inference_steps))
            return max(n, len(images))

        call = self._prepare_call(class_labels, difficulty, prompt, difficulty_only, calibrated, guidance_scale,
                                  difficulty_guidance_scale, num_inference_steps, scheduler, guidance_branches,
                                  widen=widen, curve_args=(strength, num_inference_steps),
                                  shaping=(guidance_interval, guidance_rescale))
        n, device, sched = call.n, call.device, call.scheduler

        # the part of the schedule that strength reruns
        sched.set_timesteps(num_inference_steps, device=device)
        kept = self.steps_rerun(strength, num_inference_steps)
        start = (num_inference_steps - kept) * sched.order
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)

        init = self.encode_images(images, n)
        noise = self.prepare_latents(n, generator, None, sched) / sched.init_noise_sigma  # unit-variance noise
        latents = sched.add_noise(init, noise, timesteps[:1].repeat(n))
        extra = {"eta": eta, "generator": generator} if isinstance(sched, DDIMScheduler) else {}
        latents = self.denoise(latents, sched, call.branches, call.g_text, call.g_difficulty, extra,
                               timesteps=timesteps, guidance_interval=guidance_interval,
                               guidance_rescale=guidance_rescale)
        return self._finish_call(latents, call, output_type, return_dict)


__all__ = ["DEFAULT_STRENGTH", "MAX_IMAGE_BYTES", "DifficultyControlledImg2ImgPipeline", "load_image", "prepare_image"]
