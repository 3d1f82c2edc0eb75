#!/usr/bin/env python
"""Warm latency of each app endpoint on this machine, through gradio_client.

    python bench/app_latency.py [--checkpoint checkpoints/fashion-mnist] [--repeats 3]

Targets from the app issue: Generate (8 images, default settings) <= 1.5 s; the 8 x 4 sweep < 8 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, SAMPLING
from dacd.explore import Workbench
from dacd.ui import build_app, launch_kwargs

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(EMBEDDED_CHECKPOINT))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from gradio_client import Client

    gen = Workbench(args.checkpoint)
    demo = build_app(gen)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs())
    client = Client(url, verbose=False)
    d = SAMPLING
    calls = {
        "generate (8 images)": (["Shirt", 0.5, gen.has_calibration(), 8, 0, False, d.num_inference_steps, d.guidance_scale,
                                 d.difficulty_guidance_scale, ""], "/generate"),
        "sweep (8 columns x 4 seeds)": (["Shirt", "0, 1, 2, 3", 8, False, d.num_inference_steps], "/sweep"),
        "distribution (N=200, all classes)": ([DIFFICULTY.mu, DIFFICULTY.sigma, 200, "all", 0], "/distribution"),
        "browse": (["Shirt"], "/browse"),
    }
    print(f"{torch.get_num_threads()} torch threads, {d.scheduler} {d.num_inference_steps} steps")
    try:
        for name, (inputs, api) in calls.items():
            client.predict(*inputs, api_name=api)  # warm-up: loads models, caches
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                client.predict(*inputs, api_name=api)
                ts.append(time.perf_counter() - t0)
            print(f"{name:36s} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
