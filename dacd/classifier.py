"""timm classifiers: build by name, train with a progress bar, predict, save/load.

A `Classifier` wraps a timm model with the input normalization, so that it takes
images in [0, 1] and its `config.json` + `model.safetensors` are enough to rebuild it
(no pickle). It is used twice: as the *scoring* classifier (difficulty scores) and as
the *evaluation* classifier (measuring generated images; other architecture and seed).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .weights import DamagedWeightsError, check_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_SHARD_BYTES = 9 * 2**20  # Hugging Face Spaces refuse files over 10 MiB without LFS


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier."""

    arch: str = "resnet10t"  # any timm model name
    in_chans: int = 1
    num_classes: int = 10
    image_size: int = 32
    class_names: list[str] = field(default_factory=list)
    mean: float = 0.5  # input normalization, computed from the training images
    std: float = 0.5
    model_kwargs: dict = field(default_factory=dict)  # extra timm create_model kwargs


@dataclass
class TrainConfig:
    """Classifier training defaults (sized for Fashion-MNIST on 2 CPU cores)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3  # peak of a one-cycle schedule
    weight_decay: float = 5e-4
    hflip: bool = True  # Fashion-MNIST items are left/right symmetric enough
    seed: int = 0
    steps: int | None = None  # if set: exactly this many optimizer steps (epochs ignored), e.g. to give
    #                           every cell of an experiment the same budget whatever its data size


class Classifier(nn.Module):
    """A timm model with built-in normalization: input float images in [0, 1]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()

        self.config = config
        self.model = timm.create_model(config.arch, pretrained=False, in_chans=config.in_chans,
                                       num_classes=config.num_classes, **config.model_kwargs)
        self.register_buffer("mean", torch.tensor(float(config.mean)), persistent=True)
        self.register_buffer("std", torch.tensor(float(config.std)), persistent=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled, pre-logits) features."""
        x = (x - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None,
                        max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
        """Write config.json and safetensors weights (optionally cast, e.g. fp16 for shipping;
        loading casts back to fp32), sharded with an index when larger than `max_shard_bytes`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in list(folder.glob("model*.safetensors")) + list(folder.glob(INDEX_NAME)):
            old.unlink()
        state = {}
        for k, v in self.state_dict().items():
            v = v.detach().cpu()
            state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        shards, size = [{}], 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        if len(shards) == 1:
            save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(folder / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            (folder / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}, indent=1) + "\n")
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Classifier":
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not w_path.is_file() and (folder / INDEX_NAME).is_file():
            w_path = folder / INDEX_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"classifier file {p} is missing: point at a folder written by "
                    "Classifier.save_pretrained (train one with train/train_classifier.py)"
                )
        try:
            config = ClassifierConfig(**json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"classifier config {cfg_path} is not valid: {e}") from e
        model = cls(config)
        try:
            if w_path.name == INDEX_NAME:
                files = sorted(set(json.loads(w_path.read_text())["weight_map"].values()))
                state = {}
                for f in files:
                    state.update(load_file(str(check_safetensors(folder / f))))
            else:
                state = load_file(str(check_safetensors(w_path)))
        except DamagedWeightsError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"classifier weights {w_path} are corrupted ({e}); retrain or restore the file") from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"classifier weights {w_path} do not match {config.arch}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model.to(device).eval()


def load_classifiers(folders, device: str | torch.device = "cpu", loaded: dict | None = None) -> list[Classifier]:
    """`Classifier.from_pretrained` of each folder, each folder loaded once: `loaded` (a dict the caller
    keeps, resolved path -> classifier) holds what earlier calls loaded, so committees that share
    members (a looser committee, a feedback scorer) share the loaded models."""
    loaded = {} if loaded is None else loaded
    out = []
    for folder in folders:
        key = Path(folder).resolve()
        if key not in loaded:
            loaded[key] = Classifier.from_pretrained(folder, device=device)
        out.append(loaded[key])
    return out


def build_classifier(arch: str, *, in_chans: int, num_classes: int, class_names=(), image_size: int = 32,
                     mean: float = 0.5, std: float = 0.5, **model_kwargs) -> Classifier:
    """Factory in front of timm: the right `in_chans`/`num_classes` and normalization."""
    return Classifier(ClassifierConfig(arch=arch, in_chans=in_chans, num_classes=num_classes,
                                       image_size=image_size, class_names=list(class_names),
                                       mean=float(mean), std=float(std), model_kwargs=model_kwargs))


def to_float(images) -> torch.Tensor:
    """uint8 (N, C, H, W) array/tensor -> float tensor in [0, 1] (floats pass through)."""
    x = torch.as_tensor(images)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of training examples in one epoch: a function of (seed, epoch) only, so that
    batch boundaries never depend on where a run was interrupted."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_classifier(model: Classifier, images, labels, cfg: TrainConfig, *, device=None,
                     epoch_end: Callable[[int, Classifier], None] | None = None,
                     desc: str = "train", progress: bool = True) -> list[float]:
    """Train in place with AdamW + one-cycle LR; returns the mean loss per epoch.

    `images` are uint8 (N, C, H, W) (kept on the CPU, batches moved to `device`);
    `epoch_end(epoch, model)` runs after each epoch (used for data-map dynamics).
    """
    device = torch.device(device or "cpu")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    images = torch.as_tensor(np.asarray(images))
    n = len(labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, done = [], 0
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(epoch_order(n, cfg.seed, epoch))
        this_epoch = min(steps_per_epoch, total_steps - done)
        total, bar = 0.0, tqdm(range(this_epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}",
                               disable=not progress, leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = to_float(images[idx]), labels[idx]
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        done += this_epoch
        losses.append(total / max(1, this_epoch))
        if epoch_end is not None:
            epoch_end(epoch, model)
    model.eval()
    return losses


@torch.no_grad()
def predict(model: Classifier, images, *, batch_size: int = 512, device=None, features: bool = False,
            progress: bool = False, desc: str = "predict"):
    """Class probabilities (N, C) as float32 numpy; with `features=True` also (N, D) features."""
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    probs, feats = [], []
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        x = to_float(images[start:start + batch_size]).to(device)
        f = model.features(x)
        probs.append(F.softmax(model.head(f).float(), dim=-1).cpu())
        if features:
            feats.append(f.float().cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, model.config.num_classes), np.float32)
    if not features:
        return p
    return p, (torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32))


def image_stats(images) -> tuple[float, float]:
    """Mean and std of uint8 images in [0, 1] units (for the normalization buffers)."""
    x = np.asarray(images, dtype=np.float64) / 255.0
    return float(x.mean()), float(x.std() + 1e-6)
