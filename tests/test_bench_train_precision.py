"""bench/train_precision.py: a base training step in float32 and under bf16 autocast."""

import re

from conftest import run_script


def test_both_precisions_time_a_step_and_agree_on_the_gradient(tiny_base):
    out = run_script("bench/train_precision.py", "--base", tiny_base, "--batch-size", "4", "--steps", "1").stdout
    assert re.search(r"float32\s+\d+\.\d+ s/step", out) and re.search(r"bf16 autocast\s+\d+\.\d+ s/step", out)
    ratio, loss_diff, cosine = re.search(r"time: (\S+); loss difference (\S+); gradient cosine (\S+)", out).groups()
    assert float(ratio) > 0 and float(loss_diff) < 1e-2 and 0.99 < float(cosine) <= 1.0 + 1e-9
