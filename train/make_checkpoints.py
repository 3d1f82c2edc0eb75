#!/usr/bin/env python
"""Rebuild the embedded default in checkpoints/fashion-mnist/, stage by stage (= `make checkpoints`).

Stages, each skipped when its output exists (delete a folder to redo it) and each resumable
from its own state under runs/ when interrupted:

  base       train/train_base.py --prediction-type v_prediction
                                           tiny SD (VAE, then U-Net + text encoder; the U-Net predicts v:
                                           samples closer to real ones than epsilon's at the same cost, model card)
  evaluator  train/train_classifier.py     evaluation classifier (resnet18, seed 1): judges, never selects
  classifier-2  train/train_classifier.py  second scoring classifier (resnet14t, seed 2): with classifier/,
                                           the committee that selects images (train/generate.py --select)
  classifier-3  train/train_classifier.py  third scoring classifier (convnext_atto, seed 3, 4 epochs): with the
                                           two above, the committee the calibration curve is fitted to, and a
                                           stricter label rule for pools (`--committee` classifier classifier-2
                                           classifier-3); never the default selection committee
  dacd       train/train_dacd.py           LoRA + difficulty encoder (difficulty-balanced sampling; 4,500 steps)
  baseline   train/train_dacd.py --no-difficulty --balance-power 0   (Real-Fake-style: natural data; 1,500 steps)
  calibrate  train/calibrate.py            calibration curve, measured by the mean s of the three scoring
                                           classifiers (never the evaluator)
  distribution-view  train/distribution_view.py  the app's default Distributions view (with its fingerprint;
                                           always checked, recomputed when the models changed)

The difficulty scores (scores.parquet, classifier/) are shipped and are not rebuilt here:
`make scores` does that. Wall-clock seconds per stage go to checkpoints/fashion-mnist/stage_seconds.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dacd.defaults import EMBEDDED_CHECKPOINT, LAYOUT

ROOT = Path(__file__).resolve().parents[1]
CK = EMBEDDED_CHECKPOINT
DACD_STEPS = 4500  # dacd (longer training gave a better dial on the rebuilt base; model card)
BASELINE_STEPS = 1500  # the baseline kept its 1,500 steps (not retrained)

STAGES = {
    "base": (CK / LAYOUT.base / "model_index.json", ["train/train_base.py", "--prediction-type", "v_prediction"]),
    "evaluator": (CK / LAYOUT.evaluator / "config.json", ["train/train_classifier.py"]),
    "classifier-2": (CK / LAYOUT.classifier_2 / "config.json",  # the selection committee's second member
                     ["train/train_classifier.py", "--arch", "resnet14t", "--seed", "2",
                      "--output-dir", str(CK / LAYOUT.classifier_2)]),
    "classifier-3": (CK / LAYOUT.classifier_3 / "config.json",  # the calibration committee's third member
                     ["train/train_classifier.py", "--arch", "convnext_atto", "--seed", "3", "--epochs", "4",
                      "--output-dir", str(CK / LAYOUT.classifier_3)]),
    "dacd": (CK / LAYOUT.dacd / LAYOUT.dacd_config, ["train/train_dacd.py", "--max-train-steps", str(DACD_STEPS)]),
    "baseline": (CK / LAYOUT.baseline / LAYOUT.dacd_config,
                 ["train/train_dacd.py", "--no-difficulty", "--balance-power", "0", "--max-train-steps",
                  str(BASELINE_STEPS), "--output-dir", str(CK / LAYOUT.baseline)]),
    "calibrate": (CK / LAYOUT.dacd / LAYOUT.calibration, ["train/calibrate.py"]),
    # no marker: always run; the script itself returns at once when the stored view matches the models
    "distribution-view": (None, ["train/distribution_view.py", "--checkpoint", str(CK)]),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES),
                   help="stages to run, in this order (default: the whole chain)")
    args = p.parse_args(argv)
    times_path = CK / "stage_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for name in args.stages:
        done_marker, cmd = STAGES[name]
        if done_marker is not None and done_marker.exists():
            print(f"[{name}] done ({done_marker.relative_to(ROOT)} exists)")
            continue
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, *cmd], cwd=ROOT)
        times[name] = times.get(name, 0.0) + time.time() - t0
        times_path.write_text(json.dumps(times, indent=2) + "\n")
        if rc != 0:
            print(f"[{name}] exited {rc}; rerun `make checkpoints` to resume")
            return rc
    print("stage seconds:", {k: round(v) for k, v in times.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
