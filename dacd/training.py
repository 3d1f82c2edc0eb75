"""Training loops shared by the train/ scripts (accelerate; state as safetensors).

* `train_vae` and `train_base_unet`: the tiny SD of the embedded default (it plays
  the role of the pretrained SD the paper starts from).
* `train_dacd`: decoupled training. The base U-Net is frozen; peft LoRA on its
  attention projections learns the domain; the difficulty encoder, trained from
  scratch with its own learning rate, learns difficulty. Text and difficulty are
  dropped independently. `no_difficulty=True` trains the baseline (LoRA only).

Every step's randomness (batch, noise, timesteps, dropout) is drawn from generators
seeded by (seed, step, process), and all state (trainable weights, optimizer, EMA,
loss log) is saved as safetensors + JSON under `runs/`, so `resume="latest"` continues
exactly where a killed run stopped, and nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

# ---------------------------------------------------------------- helpers


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank, stream)."""
    mixed = np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))


def step_rng(seed: int, step: int, rank: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank])


def _lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def _warm_up(opt: torch.optim.Optimizer, base_lrs: list[float], step: int, warmup: int) -> None:
    """Linear learning-rate warm-up of each parameter group over the first `warmup` steps."""
    for group, base in zip(opt.param_groups, base_lrs):
        group["lr"] = _lr_at(step, base, warmup)


def images_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1], as diffusers' VAEs expect."""
    return images.float().div(127.5).sub(1.0)


class EMA:
    """Exponential moving average of a module's float parameters, keyed by name; with
    `trainable_only`, of the parameters that require grad (a LoRA, not the frozen base)."""

    def __init__(self, module: nn.Module, decay: float = 0.999, trainable_only: bool = False):
        if not 0.0 <= decay < 1.0:  # also refuses NaN
            raise ValueError(f"EMA decay must be in [0, 1) (0: the last step's weights), got {decay}")
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in module.named_parameters()
                       if p.requires_grad or not trainable_only}

    def _tracked(self, module: nn.Module) -> list:
        pairs = [(k, p) for k, p in module.named_parameters() if k in self.shadow]
        if len(pairs) != len(self.shadow):  # e.g. a wrapped module whose names carry a prefix
            raise ValueError(f"the module has {len(pairs)} of the EMA's {len(self.shadow)} parameters by name: "
                             "pass the module the EMA was made from (unwrapped)")
        return pairs

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up, as is usual for EMA of diffusion models
        for k, p in self._tracked(module):
            self.shadow[k].lerp_(p.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for k, p in self._tracked(module):
            p.copy_(self.shadow[k].to(p.device, p.dtype))


# ---------------------------------------------------------------- checkpoints

def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state_keys": {}}
    for idx, st in sd["state"].items():
        meta["state_keys"][str(idx)] = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous()
                meta["state_keys"][str(idx)][key] = "tensor"
            else:
                meta["state_keys"][str(idx)][key] = val
    return tensors, meta


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for idx, keys in meta["state_keys"].items():
        state[int(idx)] = {k: (tensors[f"{idx}.{k}"] if v == "tensor" else v) for k, v in keys.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Checkpointer:
    """Save/restore trainable weights, optimizer, EMA and a JSON state under `run_dir`.

    Only parameters with `requires_grad` (plus EMA shadows) are saved, so a checkpoint
    of LoRA training holds the LoRA and encoder, not the frozen base.
    """

    def __init__(self, run_dir: str | Path, modules: dict[str, nn.Module], optimizer, emas: dict | None = None,
                 keep: int = 2, is_main: bool = True):
        self.run_dir, self.modules, self.optimizer = Path(run_dir), modules, optimizer
        self.emas, self.keep, self.is_main = emas or {}, keep, is_main

    def latest(self) -> Path | None:
        ckpts = sorted(self.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        ckpts = [p for p in ckpts if (p / "state.json").is_file()]  # state.json is written last
        return ckpts[-1] if ckpts else None

    def save(self, step: int, state: dict) -> None:
        if not self.is_main:
            return
        out = self.run_dir / f"checkpoint-{step}"
        tmp = self.run_dir / f".tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {}
        for name, m in self.modules.items():
            for k, p in m.named_parameters():
                if p.requires_grad:
                    weights[f"{name}/{k}"] = p.detach().cpu().contiguous()
        for name, ema in self.emas.items():
            for k, v in ema.shadow.items():
                weights[f"ema:{name}/{k}"] = v.cpu().contiguous()
        save_file(weights, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_tensors(self.optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "state.json").write_text(json.dumps(dict(state, step=step)))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        for old in sorted(self.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path) -> dict:
        weights = load_file(str(path / "trainable.safetensors"))
        for name, m in self.modules.items():
            params = dict(m.named_parameters())
            for k, p in params.items():
                key = f"{name}/{k}"
                if p.requires_grad:
                    if key not in weights:
                        raise ValueError(f"checkpoint {path} lacks {key}: it was written by another configuration")
                    with torch.no_grad():
                        p.copy_(weights[key].to(p.device, p.dtype))
        for name, ema in self.emas.items():
            for k in ema.shadow:
                if f"ema:{name}/{k}" not in weights:
                    raise ValueError(f"checkpoint {path} has no EMA of {name} ({k}): it was written without EMA; "
                                     "resume it with the settings it was started with, or start a new run folder")
                ema.shadow[k] = weights[f"ema:{name}/{k}"].to(ema.shadow[k].device, torch.float32)
        _optimizer_from_tensors(self.optimizer, load_file(str(path / "optimizer.safetensors")),
                                json.loads((path / "optimizer.json").read_text()))
        return json.loads((path / "state.json").read_text())


def resolve_resume(checkpointer: Checkpointer, resume: str | None) -> tuple[int, dict]:
    if not resume:
        return 0, {}
    path = checkpointer.latest() if resume == "latest" else Path(resume)
    if path is None:
        return 0, {}
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a finished checkpoint (no state.json)")
    state = checkpointer.load(path)
    return int(state["step"]), state


def write_loss_csv(path: Path, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("step,loss\n")
        for step, loss in history:
            f.write(f"{step},{loss:.6f}\n")


# ---------------------------------------------------------------- the step loop

class TrainingSteps:
    """The steps of a resumable run and the bookkeeping after each, shared by all loops.

    Iterating yields the steps still to run, under a progress bar. `record(step, loss)`
    after each step: the mean loss since the last entry goes into `history` (and onto
    the bar) every `log_every` steps and at the last step; a checkpoint is saved every
    `checkpointing_steps` and at the last step, so a stopped run resumes where it ended.
    """

    def __init__(self, checkpointer: Checkpointer, resume: str | None, *, total: int, stop_at: int | None,
                 log_every: int, checkpointing_steps: int, desc: str, progress: bool = True,
                 state: dict | None = None, barrier: Callable[[], None] | None = None):
        self.checkpointer, self.total, self.desc, self.progress = checkpointer, total, desc, progress
        self.log_every, self.checkpointing_steps = log_every, checkpointing_steps
        self.state = state or {}  # saved with the history in each checkpoint's state.json
        self.barrier = barrier  # all processes meet here before a checkpoint
        self.start, saved = resolve_resume(checkpointer, resume)
        self.saved_state = saved  # what the resumed checkpoint recorded (its config among it); {} when new
        self.history: list[tuple[int, float]] = [tuple(x) for x in saved.get("history", [])]
        self.end = total if stop_at is None else min(stop_at, total)
        self.step_seconds: list[float] = []
        self.seconds = 0.0
        self._running, self._count = 0.0, 0

    def __iter__(self):
        self._bar = tqdm(range(self.start, self.end), initial=self.start, total=self.total, desc=self.desc,
                         disable=not self.progress)
        t_start = self._t_prev = time.time()
        yield from self._bar
        self.seconds = time.time() - t_start

    def record(self, step: int, loss: float) -> None:
        now = time.time()
        self.step_seconds.append(now - self._t_prev)
        self._t_prev = now
        self._running += loss
        self._count += 1
        done = step + 1
        if done % self.log_every == 0 or done == self.end:
            mean = self._running / self._count
            self.history.append((done, mean))
            self._bar.set_postfix(loss=f"{mean:.4f}")
            self._running, self._count = 0.0, 0
        if done % self.checkpointing_steps == 0 or done == self.end:
            if self.barrier is not None:
                self.barrier()
            self.checkpointer.save(done, {"history": self.history, **self.state})

    @property
    def finished(self) -> bool:
        return self.end >= self.total

    def summary(self) -> dict:
        """What each loop returns; `history` holds (step, mean loss) over this and earlier runs."""
        times = self.step_seconds
        return {"steps": self.end, "finished": self.finished, "seconds_this_run": self.seconds,
                "history": self.history,
                "median_step_seconds": float(np.median(times[2:] or times)) if times else math.nan}


# ---------------------------------------------------------------- latents

@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256, device=None, progress: bool = True):
    """Posterior mean and std of the VAE for uint8 images (cached once: the VAE is frozen)."""
    device = device or next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    means, stds = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="encoding latents", disable=not progress, leave=False):
        x = images_to_model_range(images[i:i + batch_size]).to(device, dtype)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def sample_latents(mean, std, idx, gen: torch.Generator, scaling_factor: float) -> torch.Tensor:
    m, s = mean[idx], std[idx]
    return (m + s * torch.randn(m.shape, generator=gen)) * scaling_factor


def diffusion_target(scheduler, latents, noise, timesteps):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (use 'epsilon' or 'v_prediction')")


# ---------------------------------------------------------------- confuser prompts

CONFUSER_SUFFIX = " like a {}"


def confuser_classes(probs: np.ndarray, labels, oof_pred=None) -> np.ndarray:
    """Per image, the class it is most easily taken for: its out-of-fold prediction where that
    is wrong (`oof_pred`, the score table's `pred`), else the most probable class other than its
    label under `probs` (N, C)."""
    labels = np.asarray(labels, int)
    p = np.array(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(labels):
        raise ValueError(f"probs must be (N, C) for {len(labels)} labels, got shape {p.shape}")
    p[np.arange(len(labels)), labels] = -np.inf
    out = p.argmax(1)
    if oof_pred is not None:
        oof_pred = np.asarray(oof_pred, int)
        wrong = oof_pred != labels
        out[wrong] = oof_pred[wrong]
    return out


def confuser_prompt(template: str, class_names, label: int, confuser: int) -> str:
    """The class prompt with the class the image resembles: 'a photo of a Shirt like a T-shirt/top'."""
    return template.format(class_names[label]) + CONFUSER_SUFFIX.format(class_names[confuser])


def confuser_caption_lists(template: str, class_names, labels, confusers, s, *, band=(0.3, 0.7),
                           size: int = 100) -> dict[str, list[str]]:
    """Per class, `size` confuser prompts in the proportions of the confusers of its training images
    whose `s` lies in `band` (all its images where none do): a model trained on confuser prompts
    keeps them as its confuser_prompts.json, which train/generate.py and train/downstream.py sample with."""
    labels, confusers, s = np.asarray(labels, int), np.asarray(confusers, int), np.asarray(s, float)
    out = {}
    for c, name in enumerate(class_names):
        mine = labels == c
        if not mine.any():
            continue
        pick = mine & (s >= band[0]) & (s < band[1])
        counts = np.bincount(confusers[pick if pick.any() else mine], minlength=len(class_names)).astype(float)
        share = counts / counts.sum() * size
        n = np.floor(share).astype(int)
        n[np.argsort(-(share - n), kind="stable")[:size - n.sum()]] += 1  # largest remainders
        out[name] = [confuser_prompt(template, class_names, c, k) for k in range(len(class_names)) for _ in range(n[k])]
    return out


# ---------------------------------------------------------------- sampling weights

def balanced_weights(s: np.ndarray, power: float = 1.0, bins: int = 10, groups: np.ndarray | None = None) -> np.ndarray:
    """Per-image sampling weights that flatten the distribution of s.

    `power=0` is uniform sampling; `power=1` gives every s-bin the same total weight.
    With `groups` (e.g. class labels) the flattening happens within each group and every group
    keeps its share of the images, so a class with few hard images is neither drawn less often
    overall nor has its hard images drowned by the hard bins of other classes.
    """
    s = np.asarray(s, float)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != s.shape:
            raise ValueError(f"groups has shape {groups.shape}, s {s.shape}: one group per image")
        w = np.zeros(len(s))
        for g in np.unique(groups):
            mine = groups == g
            w[mine] = balanced_weights(s[mine], power, bins) * mine.mean()
        return w / w.sum()
    if power == 0:
        return np.full(len(s), 1.0 / len(s))
    b = np.clip((s * bins).astype(int), 0, bins - 1)
    counts = np.bincount(b, minlength=bins).astype(float)
    w = counts[b] ** (-power)
    return w / w.sum()


# ---------------------------------------------------------------- dacd (LoRA + encoder)

@dataclass
class DacdTrainConfig:
    max_train_steps: int = 6000
    batch_size: int = 64
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: tuple = ("to_q", "to_k", "to_v", "to_out.0")
    lr: float = 5e-4  # LoRA
    encoder_lr: float = 1e-3  # the encoder starts from scratch
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    text_dropout: float = 0.1  # prompt -> empty prompt
    difficulty_dropout: float = 0.1  # all K tokens -> null-difficulty tokens
    balance_power: float = 0.5  # difficulty-balanced sampling (0 = uniform, 1 = flat over s-bins)
    balance_per_class: bool = False  # flatten s within each class (each class keeps its share of draws)
    num_tokens: int = 4
    s_embedding: str = "fourier"
    no_difficulty: bool = False  # baseline: LoRA only
    ema_decay: float = 0.0  # > 0: the saved LoRA and encoder are an EMA of the trained ones (0: the last step's)
    checkpointing_steps: int = 500
    log_every: int = 50
    seed: int = 0
    mixed_precision: str = "no"

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA, e.g. 0.999), got {self.ema_decay}")


@dataclass
class TrainingData:
    """Images + labels + difficulty (+ optional per-image prompts) for dacd training."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: np.ndarray
    s: np.ndarray
    class_names: list[str]
    prompts: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    confusers: np.ndarray | None = None  # per image, the class it resembles (train/train_dacd.py --confuser-prompts)


def add_lora(unet, cfg: DacdTrainConfig) -> None:
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                target_modules=list(cfg.lora_targets)))


def make_accelerator(mixed_precision: str = "no"):
    """The Accelerator that dacd training runs under (also what train/train_dacd.py builds)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(mixed_precision=mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _weight_dtype(accelerator) -> torch.dtype:
    """The frozen modules' dtype under mixed precision; trainable weights stay fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


def _setup_dacd(pipe, num_classes: int, cfg: DacdTrainConfig, accelerator):
    """Freeze the base, add LoRA, build the encoder (unless `no_difficulty`) and AdamW with a
    group each. Initialisations are seeded: a resumed run must rebuild the same ones."""
    from .encoder import DifficultyEncoder

    device, weight_dtype = accelerator.device, _weight_dtype(accelerator)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
        m.to(device)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    unet = pipe.unet
    torch.manual_seed(cfg.seed)
    add_lora(unet, cfg)
    for p in unet.parameters():  # trainable LoRA weights stay in fp32
        if p.requires_grad:
            p.data = p.data.float()
    encoder = None
    if not cfg.no_difficulty:
        torch.manual_seed(cfg.seed + 1)
        encoder = DifficultyEncoder(num_classes=num_classes, cross_attention_dim=unet.config.cross_attention_dim,
                                    num_tokens=cfg.num_tokens, s_embedding=cfg.s_embedding).to(device)
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.lr}]
    if encoder is not None:
        groups.append({"params": list(encoder.parameters()), "lr": cfg.encoder_lr})
    return unet, encoder, torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


@dataclass
class _StepInputs:
    """What every step draws its batch from: the frozen VAE's and text encoder's outputs,
    computed once, the sampling weights, and the noise schedule."""

    mean: torch.Tensor  # VAE posterior per image
    std: torch.Tensor
    scaling: float
    prompt_embeds: torch.Tensor  # one row per distinct prompt, the empty prompt included
    prompt_row: torch.Tensor  # image -> its prompt's row
    empty_row: int
    labels: torch.Tensor
    s: torch.Tensor
    weights: np.ndarray  # difficulty-balanced sampling weights
    scheduler: object


def _cache_inputs(pipe, data: TrainingData, cfg: DacdTrainConfig, device, progress: bool) -> _StepInputs:
    mean, std = encode_latents(pipe.vae, data.images, device=device, progress=progress)
    prompts = data.prompts or [pipe.class_prompt(int(c)) for c in data.labels]
    uniq = sorted(set(prompts) | {""})
    with torch.no_grad():
        emb = torch.cat([pipe.encode_prompt(uniq[i:i + 256], device).float() for i in range(0, len(uniq), 256)])
    row = {p: i for i, p in enumerate(uniq)}
    return _StepInputs(mean=mean, std=std, scaling=float(pipe.vae.config.scaling_factor), prompt_embeds=emb,
                       prompt_row=torch.tensor([row[p] for p in prompts]), empty_row=row[""],
                       labels=torch.as_tensor(np.asarray(data.labels, np.int64)),
                       s=torch.as_tensor(np.asarray(data.s, np.float32)),
                       weights=balanced_weights(data.s, cfg.balance_power,
                                                groups=data.labels if cfg.balance_per_class else None),
                       scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config))


def _dacd_step(step: int, pipe, unet, encoder, opt, inputs: _StepInputs, cfg: DacdTrainConfig, accelerator) -> float:
    """One optimizer step; its batch, noise, timesteps and dropout come from (seed, step, process)."""
    device, weight_dtype, sched = accelerator.device, _weight_dtype(accelerator), inputs.scheduler
    rank = accelerator.process_index
    rng, gen = step_rng(cfg.seed, step, rank), step_generator(cfg.seed, step, rank)
    idx = torch.from_numpy(rng.choice(len(inputs.weights), size=cfg.batch_size, p=inputs.weights))
    lat = sample_latents(inputs.mean, inputs.std, idx, gen, inputs.scaling)
    noise = torch.randn(lat.shape, generator=gen)
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
    drop_text = torch.rand(len(idx), generator=gen) < cfg.text_dropout
    drop_diff = torch.rand(len(idx), generator=gen) < cfg.difficulty_dropout
    lat, noise, timesteps = lat.to(device), noise.to(device), timesteps.to(device)
    noisy = sched.add_noise(lat, noise, timesteps)
    target = diffusion_target(sched, lat, noise, timesteps)
    text = inputs.prompt_embeds[torch.where(drop_text, inputs.empty_row, inputs.prompt_row[idx])].to(device)
    with accelerator.autocast():
        ctx = text if encoder is None else pipe.encode_conditions(
            text, inputs.labels[idx], inputs.s[idx], null_mask=drop_diff, encoder=encoder)
        pred = unet(noisy.to(weight_dtype), timesteps, encoder_hidden_states=ctx.to(weight_dtype)).sample
        loss = F.mse_loss(pred.float(), target.float())
    accelerator.backward(loss)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return accelerator.gather(loss.detach()[None]).mean().item()  # .item() syncs: honest step times


# settings a run may resume with at other values without that being reported (how long, how often it saves/logs)
RESUME_FREE = frozenset({"max_train_steps", "checkpointing_steps", "log_every"})


def train_dacd(pipe, data: TrainingData, cfg: DacdTrainConfig, run_dir: str | Path, *, accelerator=None,
               resume: str | None = "latest", progress: bool = True, log: Callable = print,
               stop_at: int | None = None) -> dict:
    """Train LoRA (+ encoder) in place on `pipe` (a DifficultyControlledPipeline whose U-Net
    has no adapter yet). Returns a summary dict. `stop_at` ends early (tests: simulated kill)."""
    accelerator = accelerator or make_accelerator(cfg.mixed_precision)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    unet, encoder, opt = _setup_dacd(pipe, len(data.class_names), cfg, accelerator)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resume loads the last step's
    modules = {"unet": unet} if encoder is None else {"unet": unet, "encoder": encoder}
    emas = {name: EMA(m, cfg.ema_decay, trainable_only=True) for name, m in modules.items()} if cfg.ema_decay else {}
    steps = TrainingSteps(Checkpointer(run_dir, modules, opt, emas=emas, is_main=accelerator.is_main_process), resume,
                          total=cfg.max_train_steps, stop_at=stop_at, log_every=cfg.log_every,
                          checkpointing_steps=cfg.checkpointing_steps, desc="baseline" if encoder is None else "dacd",
                          progress=progress and accelerator.is_local_main_process,
                          state={"config": _jsonable(asdict(cfg))}, barrier=accelerator.wait_for_everyone)
    if steps.start:
        log(f"resumed from {run_dir}/checkpoint-{steps.start}")
    saved_decay = steps.saved_state.get("config", {}).get("ema_decay", 0.0)
    if 0 < steps.start < steps.end and saved_decay != cfg.ema_decay:  # a finished run may be saved either way
        raise ValueError(f"{run_dir} was trained with ema_decay {saved_decay}, not {cfg.ema_decay}: resume it with "
                         f"--ema-decay {saved_decay}, or start a new run folder")
    if 0 < steps.start < steps.end:  # other settings may change mid-run (an experiment did), but never unsaid
        saved, now = steps.saved_state.get("config", {}), _jsonable(asdict(cfg))
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in sorted(now)
                   if k in saved and k not in RESUME_FREE and saved[k] != now[k]]
        if changed:
            log(f"note: {run_dir} resumes at step {steps.start} with other settings than it started with "
                f"({'; '.join(changed)}): its remaining steps use the new ones")
    if encoder is None:
        unet, opt = accelerator.prepare(unet, opt)
    else:
        unet, encoder, opt = accelerator.prepare(unet, encoder, opt)
    t0 = time.time()
    inputs = _cache_inputs(pipe, data, cfg, accelerator.device, progress)
    log(f"cached {len(inputs.mean)} latents and {len(inputs.prompt_embeds)} prompt embeddings "
        f"in {time.time() - t0:.0f} s")

    unet.train()
    for step in steps:
        _warm_up(opt, base_lrs, step, cfg.warmup_steps)
        loss = _dacd_step(step, pipe, unet, encoder, opt, inputs, cfg, accelerator)
        for name, ema in emas.items():  # the unwrapped modules share their parameters with the prepared ones
            ema.update(modules[name], step)
        steps.record(step, loss)

    if steps.finished:
        for name, ema in emas.items():
            ema.copy_to(modules[name])
    encoder = accelerator.unwrap_model(encoder).eval() if encoder is not None else None
    pipe.register_modules(unet=accelerator.unwrap_model(unet).eval(), difficulty_encoder=encoder)
    if accelerator.is_main_process:
        write_loss_csv(run_dir / "loss.csv", steps.history)
    summary = steps.summary()
    return dict(summary, final_loss=steps.history[-1][1] if steps.history else math.nan,
                images_per_second=(steps.end - steps.start) * cfg.batch_size * accelerator.num_processes
                / max(summary["seconds_this_run"], 1e-9),
                peak_cuda_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None)


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


# ---------------------------------------------------------------- tiny base SD

@dataclass
class BaseTrainConfig:
    """Training of the tiny base SD (VAE, then U-Net + text encoder)."""

    vae_steps: int = 1200
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # SD-style: a light KL keeps latents near-Gaussian without blurring
    unet_steps: int = 2500
    unet_batch_size: int = 128
    unet_lr: float = 5e-4
    text_dropout: float = 0.1  # the empty prompt is the unconditional branch of CFG
    ema_decay: float = 0.999
    warmup_steps: int = 200
    checkpointing_steps: int = 500
    log_every: int = 50
    seed: int = 0
    snr_gamma: float | None = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); None or 0: plain MSE


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma: min(SNR, gamma) / SNR for epsilon targets,
    min(SNR, gamma) / (SNR + 1) for v targets (both equal min(SNR, gamma) weighting of the x0 error)."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1 - ac)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def train_vae(vae, images: torch.Tensor, cfg: BaseTrainConfig, run_dir: str | Path, *, device="cpu",
              resume="latest", progress=True, stop_at: int | None = None) -> dict:
    """Reconstruction (MSE) + small KL. `images` uint8 (N, C, H, W)."""
    run_dir = Path(run_dir)
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    steps = TrainingSteps(Checkpointer(run_dir, {"vae": vae}, opt), resume, total=cfg.vae_steps, stop_at=stop_at,
                          log_every=cfg.log_every, checkpointing_steps=cfg.checkpointing_steps, desc="vae",
                          progress=progress)
    for step in steps:
        _warm_up(opt, [cfg.vae_lr], step, cfg.warmup_steps)
        idx = torch.from_numpy(step_rng(cfg.seed, step).integers(0, len(images), cfg.vae_batch_size))
        x = images_to_model_range(images[idx]).to(device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=step_generator(cfg.seed, step)).to(device)
        loss = F.mse_loss(vae.decode(z).sample, x) + cfg.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps.record(step, loss.item())
    vae.eval()
    write_loss_csv(run_dir / "loss.csv", steps.history)
    return steps.summary()


@torch.no_grad()
def vae_reconstruction_error(vae, images: torch.Tensor, batch_size: int = 256) -> dict:
    """Mean squared and absolute error of posterior-mean reconstructions, in [0, 1] pixel units,
    their PSNR (of the mean squared error) and the mean SSIM per image."""
    from .evaluation import ssim  # evaluation imports the classifier stack; only needed here

    device = next(vae.parameters()).device
    se = ae = 0.0
    sims = []
    for i in range(0, len(images), batch_size):
        x = images_to_model_range(images[i:i + batch_size]).to(device)
        r = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        diff = (r - x) / 2
        se += diff.pow(2).sum().item()
        ae += diff.abs().sum().item()
        sims.append(ssim((r.cpu() + 1) / 2, (x.cpu() + 1) / 2))
    n = images.numel()
    return {"mse": se / n, "mae": ae / n, "psnr": 10 * math.log10(1.0 / max(se / n, 1e-12)),
            "ssim": float(np.concatenate(sims).mean())}


def train_base_unet(pipe_parts: dict, images: torch.Tensor, labels: np.ndarray, prompts_by_class: list[str],
                    cfg: BaseTrainConfig, run_dir: str | Path, *, device="cpu", resume="latest", progress=True,
                    stop_at: int | None = None) -> dict:
    """U-Net and text encoder trained jointly from scratch on class prompts, with EMA.

    At the end the EMA weights are copied into the modules of `pipe_parts`.
    """
    run_dir = Path(run_dir)
    unet, text_encoder, tokenizer, vae = (pipe_parts[k] for k in ("unet", "text_encoder", "tokenizer", "vae"))
    sched = pipe_parts["scheduler"]
    for m in (unet, text_encoder):
        m.to(device).train()
    vae.to(device).eval().requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    emas = {"unet": EMA(unet, cfg.ema_decay), "text_encoder": EMA(text_encoder, cfg.ema_decay)}
    steps = TrainingSteps(Checkpointer(run_dir, {"unet": unet, "text_encoder": text_encoder}, opt, emas=emas),
                          resume, total=cfg.unet_steps, stop_at=stop_at, log_every=cfg.log_every,
                          checkpointing_steps=cfg.checkpointing_steps, desc="unet+text", progress=progress)
    mean, std = encode_latents(vae, images, device=device, progress=progress)
    scaling = float(vae.config.scaling_factor)
    ids = tokenizer(list(prompts_by_class) + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    empty = len(prompts_by_class)
    labels_t = torch.as_tensor(np.asarray(labels, np.int64))
    for step in steps:
        _warm_up(opt, [cfg.unet_lr], step, cfg.warmup_steps)
        rng, gen = step_rng(cfg.seed, step, 0), step_generator(cfg.seed, step, 0, stream=1)
        idx = torch.from_numpy(rng.integers(0, len(labels_t), cfg.unet_batch_size))
        lat = sample_latents(mean, std, idx, gen, scaling).to(device)
        noise = torch.randn(lat.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen).to(device)
        drop = torch.rand(len(idx), generator=gen) < cfg.text_dropout
        ctx = text_encoder(ids[torch.where(drop, empty, labels_t[idx]).to(device)])[0]
        pred = unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=ctx).sample
        if cfg.snr_gamma:
            per = F.mse_loss(pred, diffusion_target(sched, lat, noise, t), reduction="none").flatten(1).mean(1)
            loss = (per * min_snr_weights(sched, t, cfg.snr_gamma)).mean()
        else:
            loss = F.mse_loss(pred, diffusion_target(sched, lat, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        emas["unet"].update(unet, step)
        emas["text_encoder"].update(text_encoder, step)
        steps.record(step, loss.item())
    write_loss_csv(run_dir / "loss.csv", steps.history)
    if steps.finished:
        emas["unet"].copy_to(unet)
        emas["text_encoder"].copy_to(text_encoder)
    unet.eval()
    text_encoder.eval()
    return steps.summary()


LOGVAR_FLOOR = -30.0  # diffusers' DiagonalGaussianDistribution clamps log-variances at this floor


@torch.no_grad()
def make_encoder_deterministic(vae) -> None:
    """Set the VAE posterior's log-variance to the floor for every input (the log-variance half of
    `quant_conv`: zero weights, bias at the floor), so `latent_dist.sample()` returns the mean (std
    3e-7) everywhere diffusers or this package encodes; the means and the decoder are untouched."""
    if vae.quant_conv is None:
        raise ValueError("make_encoder_deterministic needs a VAE with quant_conv (use_quant_conv=True)")
    half = vae.config.latent_channels
    vae.quant_conv.weight[half:] = 0.0
    vae.quant_conv.bias[half:] = LOGVAR_FLOOR


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, n: int = 4096, seed: int = 0) -> float:
    """Std of the VAE's latents on a fixed sample: SD's `scaling_factor` is its inverse."""
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False))
    mean, std = encode_latents(vae, images[idx], progress=False)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return float(z.std())
