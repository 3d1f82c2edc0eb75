"""Shared fixtures: a tiny Fashion-MNIST-format dataset written by the tests, tiny models."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dacd.data import write_idx

ROOT = Path(__file__).resolve().parents[1]


def make_images(labels: np.ndarray, seed: int, size: int = 28) -> np.ndarray:
    """Learnable toy images: class c draws a bright bar at a class-specific position, plus noise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    x = rng.integers(0, 60, size=(n, size, size)).astype(np.float32)
    for i, c in enumerate(labels):
        r = 2 + (int(c) * 5) % (size - 6)
        x[i, r:r + 4, 4:size - 4] += 180 * (0.6 + 0.4 * rng.random())
    return np.clip(x, 0, 255).astype(np.uint8)


def write_fake_fashion_mnist(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, seed, (img, lbl) in (("train", n_train, 0, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                       ("test", n_test, 1, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        labels = (np.arange(n) * 7 + seed) % 10
        write_idx(folder / (img + ext), make_images(labels, seed))
        write_idx(folder / (lbl + ext), labels.astype(np.uint8))
    return folder


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def load_module(path: Path):
    """A train/ or bench/ script as a module, so a test calls its functions and main() in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_dacd(src, dest):
    """A copy of a dacd folder whose base is the original's, by absolute path."""
    shutil.copytree(src, dest)
    cfg = dest / "dacd_config.json"
    d = json.loads(cfg.read_text())
    d["base"] = str((src / d["base"]).resolve())
    cfg.write_text(json.dumps(d))
    return dest


def run_script(*args, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    """Run a train/ or bench/ script in a subprocess (each owns its accelerate state)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    proc = subprocess.run([sys.executable, *map(str, args), *([] if "--no-progress" in args else [])],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_scores(fake_fmnist, tmp_path_factory) -> Path:
    """A real (tiny) scoring run over the fake dataset: scores.parquet + classifier/."""
    out = tmp_path_factory.mktemp("scores")
    run_script("train/score_difficulty.py", "--data-dir", fake_fmnist, "--k", "2", "--epochs", "1",
               "--arch", "resnet10t", "--output-dir", out, "--work-dir", out / "work", "--no-progress")
    return out


TINY_BASE_ARGS = ["--vae-steps", "4", "--unet-steps", "4", "--vae-batch-size", "8", "--unet-batch-size", "8",
                  "--vae-channels", "32", "64", "64", "--unet-channels", "32", "64", "--unet-top-attention",
                  "--checkpointing-steps", "2", "--eval-samples", "0", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_base(fake_fmnist, tmp_path_factory) -> Path:
    """A tiny SD folder written by train/train_base.py (a few steps)."""
    root = tmp_path_factory.mktemp("base")
    run_script("train/train_base.py", "--data-dir", fake_fmnist, "--output-dir", root / "base",
               "--run-dir", root / "run", *TINY_BASE_ARGS)
    return root / "base"


DACD_ARGS = ["--max-train-steps", "4", "--batch-size", "8", "--checkpointing-steps", "2", "--rank", "4",
             "--alpha", "8", "--lr", "0.05", "--encoder-lr", "0.01", "--lr-warmup-steps", "0", "--no-progress"]


def train_dacd_script(out: Path, base: Path, data_dir: Path, scores: Path, *extra, check=False):
    run = out.parent / f"run-{out.name}"
    proc = run_script("train/train_dacd.py", "--base", base, "--data-dir", data_dir, "--scores",
                      scores / "scores.parquet", "--output-dir", out, "--run-dir", run, *DACD_ARGS, *extra,
                      check=check)
    return out, run, proc


@pytest.fixture(scope="session")
def tiny_dacd(tiny_base, fake_fmnist, tiny_scores, tmp_path_factory) -> Path:
    """A dacd folder (LoRA + encoder) trained for a few steps by train/train_dacd.py."""
    root = tmp_path_factory.mktemp("models")
    out, _, _ = train_dacd_script(root / "dacd", tiny_base, fake_fmnist, tiny_scores, check=True)
    return out


@pytest.fixture(scope="session")
def tiny_baseline(tiny_base, fake_fmnist, tiny_scores, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    out, _, _ = train_dacd_script(root / "baseline", tiny_base, fake_fmnist, tiny_scores, "--no-difficulty",
                                  check=True)
    return out


@pytest.fixture(scope="session")
def tiny_evaluator(fake_fmnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluator")
    run_script("train/train_classifier.py", "--data-dir", fake_fmnist, "--arch", "resnet10t", "--epochs", "1",
               "--batch-size", "32", "--output-dir", out, "--no-progress")
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_scores, tiny_dacd, tiny_baseline, tiny_evaluator, tmp_path_factory) -> Path:
    """A checkpoint folder laid out like checkpoints/fashion-mnist/, made of the tiny models."""
    root = tmp_path_factory.mktemp("checkpoint")
    (root / "scores.parquet").symlink_to(tiny_scores / "scores.parquet")
    (root / "classifier").symlink_to(tiny_scores / "classifier", target_is_directory=True)
    (root / "dacd").symlink_to(tiny_dacd, target_is_directory=True)
    (root / "baseline").symlink_to(tiny_baseline, target_is_directory=True)
    (root / "evaluator").symlink_to(tiny_evaluator, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def app_url(tiny_checkpoint, fake_fmnist):
    """The dacd app on the tiny checkpoint, launched in this process on a free local port."""
    from dacd.explore import Workbench
    from dacd.ui import build_app, launch_kwargs

    demo = build_app(Workbench(tiny_checkpoint, data_dir=fake_fmnist))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    yield url
    demo.close()
