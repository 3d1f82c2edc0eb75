#!/usr/bin/env python
"""The app's latency on this machine, through gradio_client, as its users meet it.

    python bench/app_latency.py [--checkpoint checkpoints/fashion-mnist] [--repeats 3] [--threads 1]

Prints, all on the app's own server (in this process, like `python app.py --threads T`):
  1. warm latency of each endpoint (median of --repeats) at default settings;
  2. 8 concurrent 8-image Generate clients (separate sessions): p50, p95 and total, against
     8 x one call alone;
  3. a Generate sent while a Distributions comparison (N=200, not the stored view) is working,
     against the same Generate alone;
  4. the Distributions tab's first view after a fresh start (the page-load event that shows the
     stored default view and the calibration curve), cold.
Targets from the app issue: Generate (8 images) <= 1.5 s; 8 concurrent clients in total <= 1.2 x 8
x one call; Generate during Distributions <= 2 x alone; first Distributions view < 2 s.
Take timings on a quiet machine: another busy process changes every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
import torch

from dacd.defaults import DIFFICULTY, EMBEDDED_CHECKPOINT, SAMPLING
from dacd.explore import Workbench
from dacd.ui import build_app, launch_kwargs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(EMBEDDED_CHECKPOINT))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per request (the app's --threads)")
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args(argv)
    from gradio_client import Client

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ex = Workbench(args.checkpoint)
    demo = build_app(ex)  # checks the stored view's fingerprint once, at start
    build_s = time.perf_counter() - t0
    first_view = next(fn.fn for fn in demo.fns.values() if fn.name == "first_view")
    first_view_s = timed(first_view)  # what the page-load event does, on a freshly built app
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs())
    client = Client(url, verbose=False)
    gen = ["Shirt", 0.5, ex.has_calibration(), 8, 0, False, SAMPLING.num_inference_steps, SAMPLING.guidance_scale,
           SAMPLING.difficulty_guidance_scale, ""]
    dist = [DIFFICULTY.mu, DIFFICULTY.sigma, 200, "all", 1]  # seed 1: not the stored default view
    calls = {
        "generate (8 images)": (gen, "/generate"),
        "sweep (8 columns x 4 seeds)": (["Shirt", "0, 1, 2, 3", 8, False, SAMPLING.num_inference_steps], "/sweep"),
        "distribution (N=200, all classes)": (dist, "/distribution"),
        "browse": (["Shirt"], "/browse"),
    }
    print(f"{args.threads} torch thread(s) per request, {os.cpu_count()} CPU cores, "
          f"{SAMPLING.scheduler} {SAMPLING.num_inference_steps} steps; app built in {build_s:.2f} s")
    print(f"first Distributions view after start (stored view + calibration curve): {first_view_s:.2f} s "
          f"(target < 2 s; stored view {'found' if ex.default_distribution() else 'MISSING: computed live'})")
    try:
        alone = {}
        for name, (inputs, api) in calls.items():
            client.predict(*inputs, api_name=api)  # warm-up: loads models, caches
            ts = [timed(client.predict, *inputs, api_name=api) for _ in range(args.repeats)]
            alone[api] = statistics.median(ts)
            print(f"{name:36s} median {alone[api]:6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")

        # 2. concurrent clients, each its own session, all sent at once
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        latencies, errors, barrier = [None] * args.clients, [], threading.Barrier(args.clients)

        def one(i):
            barrier.wait()
            try:
                # other users, other seeds: identical concurrent outputs can race in Gradio's file cache
                latencies[i] = timed(clients[i].predict, *gen[:4], 1000 * (i + 1), *gen[5:], api_name="/generate")
            except Exception as e:  # noqa: BLE001 - counted and printed
                errors.append(repr(e))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.perf_counter() - t0
        ok = np.array([x for x in latencies if x is not None])
        print(f"{args.clients} concurrent generate clients: {len(ok)} served, {len(errors)} errors; p50 "
              f"{np.percentile(ok, 50):.2f} s, p95 {np.percentile(ok, 95):.2f} s, total {total:.2f} s = "
              f"{total / (args.clients * alone['/generate']):.2f} x {args.clients} x one call alone (target <= 1.2)")
        for e in errors[:3]:
            print("   error:", e)

        # 3. Generate while a Distributions comparison works
        job = Client(url, verbose=False).submit(*dist, api_name="/distribution")
        time.sleep(1.0)
        during = timed(client.predict, *gen, api_name="/generate")
        still_running = not job.done()
        job.result()
        print(f"generate during a distribution run: {during:.2f} s = {during / alone['/generate']:.2f} x alone "
              f"(target <= 2; the distribution run was {'still' if still_running else 'NO LONGER'} working)")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
