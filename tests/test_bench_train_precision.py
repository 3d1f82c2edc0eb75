"""bench/train_precision.py: a base training step in float32, channels-last and under bf16 autocast."""

import re

import pytest
from conftest import run_script


@pytest.mark.slow
def test_every_variant_times_a_step_and_agrees_on_the_gradient(tiny_base):
    out = run_script("bench/train_precision.py", "--base", tiny_base, "--batch-size", "4", "--steps", "1").stdout
    for name in ("float32", "channels-last", "bf16 autocast"):
        assert re.search(rf"{name}\s+\d+\.\d+ s/step", out)
    found = re.findall(r"(\S+(?: autocast)?) / float32 time: (\S+); loss difference (\S+); gradient cosine (\S+)", out)
    assert [f[0] for f in found] == ["channels-last", "bf16 autocast"]
    for _, ratio, loss_diff, cosine in found:
        assert float(ratio) > 0 and float(loss_diff) < 1e-2 and 0.99 < float(cosine) <= 1.0 + 1e-9
    assert float(found[0][2]) < 1e-4  # channels-last is the same arithmetic in another layout
