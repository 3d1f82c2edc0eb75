"""The library's own errors name the file or setting at fault and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dacd.classifier import Classifier, build_classifier
from dacd.defaults import LAYOUT
from dacd.generation import GenerationError, _check_or_write_config
from dacd.pipeline import DifficultyControlledPipeline
from dacd.weights import DamagedWeightsError, check_safetensors


def truncate(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_check_safetensors_accepts_whole_files_and_names_damaged_ones(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(64, 64), "b": torch.zeros(3)}, str(path))
    assert check_safetensors(path) == path
    truncate(path)
    with pytest.raises(DamagedWeightsError, match=r"w\.safetensors is damaged .*truncated.*restore it"):
        check_safetensors(path)
    path.write_bytes(b"not a safetensors file at all, just text")
    with pytest.raises(DamagedWeightsError, match=r"w\.safetensors is damaged"):
        check_safetensors(path)


def test_truncated_classifier_weights_are_named(tmp_path):
    clf = build_classifier("resnet10t", in_chans=1, num_classes=3, class_names=("a", "b", "c"))
    clf.save_pretrained(tmp_path / "clf", max_shard_bytes=1 << 30)
    Classifier.from_pretrained(tmp_path / "clf")  # whole: loads
    truncate(tmp_path / "clf" / "model.safetensors")
    with pytest.raises(DamagedWeightsError, match=r"clf/model\.safetensors is damaged .*rebuild"):
        Classifier.from_pretrained(tmp_path / "clf")


def dacd_folder(root, base="../base"):
    folder = root / "dacd"
    folder.mkdir(parents=True)
    (folder / LAYOUT.dacd_config).write_text(json.dumps({"base": base, "difficulty_encoder": True}))
    return folder


def test_a_dacd_folder_copied_without_its_base_says_so(tmp_path):
    folder = dacd_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"base model '\.\./base' named in .*dacd_config\.json is missing"
                                                r".*copy the whole checkpoint folder, or pass base="):
        DifficultyControlledPipeline.from_pretrained(folder)


def test_a_truncated_file_of_the_base_is_named(tmp_path):
    folder = dacd_folder(tmp_path)
    weights = tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({"w": torch.randn(32, 32)}, str(weights))
    truncate(weights)
    with pytest.raises(DamagedWeightsError, match=r"base/unet/diffusion_pytorch_model\.safetensors is damaged"):
        DifficultyControlledPipeline.from_pretrained(folder)


def test_a_generation_folder_with_other_settings_says_which(tmp_path):
    config = {"model": "dacd", "sampling": {"num_inference_steps": 15, "scheduler": "dpm++"}, "batch_size": 32,
              "selection": None, "plan_fingerprint": "aaa", "difficulty": {"mu": 0.5, "sigma": 0.1}}
    _check_or_write_config(tmp_path, config, True, lambda: None)
    _check_or_write_config(tmp_path, config, True, lambda: None)  # the same settings continue
    other = dict(config, sampling={"num_inference_steps": 10, "scheduler": "dpm++"}, plan_fingerprint="bbb",
                 difficulty={"mu": 0.8, "sigma": 0.1})
    with pytest.raises(GenerationError) as e:
        _check_or_write_config(tmp_path, other, True, lambda: None)
    message = str(e.value)
    assert "sampling.num_inference_steps: 15 in the folder, 10 now" in message
    assert "difficulty.mu: 0.5 in the folder, 0.8 now" in message
    assert "scheduler" not in message  # unchanged settings are not listed
    assert "pass another output folder" in message
