"""The measured s each class's calibration curve reaches (dacd.calibration.Calibration.reach) for the
v chain's six training runs of PLAN.md, and the classes the dial barely moves (flat_classes, a span
under 0.2). Needs the runs' folders (runs/exp/, not committed). Run from the repository root:
    python bench/results/controllability-classbalance/reach.py > bench/results/controllability-classbalance/reach.md
"""
import json

from dacd.calibration import FLAT_SPAN, Calibration

models = {"global balance, training seed 0 (shipped)": "checkpoints/fashion-mnist/dacd",
          "global balance, training seed 1": "runs/exp/v-s1/dacd", "global balance, training seed 2": "runs/exp/v-s2/dacd",
          **{f"per-class balance, training seed {k}": f"runs/exp/vc-s{k}/dacd" for k in (0, 1, 2)},
          "first base, global balance, training seed 2": "runs/exp/first-s2/dacd"}
names = json.load(open("checkpoints/fashion-mnist/dacd/dacd_config.json"))["class_names"]
print(f"| run | narrowest class: reach | classes spanning under {FLAT_SPAN:g} |")
print("|---|---|---|")
for label, folder in models.items():
    cal = Calibration.load(folder)
    reach = {c: cal.reach(c) for c in range(len(names))}
    low = min(reach, key=lambda c: reach[c][1] - reach[c][0])
    flat = ", ".join(f"{names[c]} {lo:.2f}-{hi:.2f}" for c, (lo, hi) in cal.flat_classes().items()) or "none"
    print(f"| {label} | {names[low]} {reach[low][0]:.2f}-{reach[low][1]:.2f} | {flat} |")
