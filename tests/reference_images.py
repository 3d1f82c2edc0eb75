"""Reference images of the shipped checkpoint, to check that a refactor keeps behaviour exactly.

    python tests/reference_images.py      # (re)write tests/data/reference_images.npz

Made before the one-house refactor (issue 11) from commit 8367c17 and compared as exact uint8 by
tests/test_shipped.py. Everything runs on one thread so that the float reductions, and
therefore the bytes, do not depend on the machine's thread count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dacd.defaults import EMBEDDED_CHECKPOINT
from dacd.pipeline import DifficultyControlledPipeline

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "tests" / "data" / "reference_images.npz"
CLASSES = [0, 6, 9]  # T-shirt/top, Shirt, Ankle boot
LEVELS = [0.1, 0.5, 0.9]
SEEDS = [0, 1]

# name -> (model folder, pipeline keyword arguments)
CASES = {
    "three-branch": ("dacd", {}),  # the defaults: text 5, difficulty 8
    "calibrated": ("dacd", {"calibrated": True}),
    "two-branch": ("dacd", {"guidance_scale": 4.0, "difficulty_guidance_scale": None}),
    "difficulty-only": ("dacd", {"difficulty_only": True}),
    "ddim-10": ("dacd", {"scheduler": "ddim", "num_inference_steps": 10}),
    "baseline": ("baseline", {}),
}


def render(pipes: dict) -> dict[str, np.ndarray]:
    """uint8 (N, H, W, C) per case: every (class, level, seed), one generator per image."""
    rows = [(c, s, seed) for c in CLASSES for s in LEVELS for seed in SEEDS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, (model, kw) in CASES.items():
            gens = [torch.Generator().manual_seed(seed) for _, _, seed in rows]
            with torch.inference_mode():
                res = pipes[model]([c for c, _, _ in rows], [s for _, s, _ in rows], generator=gens,
                                   output_type="np", **kw)
            out[name] = np.clip(np.rint(np.asarray(res.images) * 255.0), 0, 255).astype(np.uint8)
        return out
    finally:
        torch.set_num_threads(threads)


def load_pipes(checkpoint: Path = EMBEDDED_CHECKPOINT) -> dict:
    pipes = {m: DifficultyControlledPipeline.from_pretrained(checkpoint / m) for m in ("dacd", "baseline")}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def main():
    images = render(load_pipes())
    PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(PATH, cpu_capability=np.array(torch.backends.cpu.get_cpu_capability()), **images)
    print(f"wrote {PATH}: {', '.join(f'{k} {v.shape}' for k, v in images.items())}")


if __name__ == "__main__":
    main()
