"""Tiny Stable-Diffusion-architecture components for the embedded default.

Real diffusers/transformers classes (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel + CLIPTokenizer) at a size that trains on 2 CPU cores; assembled they
form a regular `StableDiffusionPipeline` folder that stock diffusers loads offline.
The tokenizer is generated here, offline: a byte-level base vocabulary (every byte,
alone and as a word end) means any text tokenizes with no unknown token; a few merges
built from the training prompts make their words single tokens.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .defaults import PROMPT_TEMPLATE

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

MAX_LENGTH = 77  # CLIP's context length, as every SD pipeline expects


@dataclass
class TinySDConfig:
    """Sizes of the embedded tiny SD (see DESIGN.md sizing notes)."""

    image_size: int = 32
    in_channels: int = 1
    latent_channels: int = 4
    # the shipped shape, chosen by bench/base_candidates.py ("lat16-fast"): 2 VAE blocks -> 1 downsample
    # -> 16x16 latents; the first shipped base had (32, 64, 64) -> 8x8 latents under a (64, 128) U-Net
    vae_channels: tuple = (32, 64)
    unet_channels: tuple = (32, 64, 128)
    unet_layers_per_block: int = 1
    # cross-attention in the first (highest-resolution) U-Net block; off: that block is plain
    # convolutions (self-attention over 16x16 latents is costly on CPU), attention starts one level down
    unet_top_attention: bool = False
    attention_head_dim: int = 8
    cross_attention_dim: int = 64  # = text hidden size
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    prediction_type: str = "epsilon"  # "v_prediction" builds an SD2-shaped base
    # rescale the betas to zero terminal SNR and sample with "trailing" timesteps (Lin et al. 2024, "Common
    # diffusion noise schedules and sample steps are flawed"): the last training step is pure noise, so no
    # image brightness leaks through it that sampling from pure noise could not reproduce; needs v_prediction.
    # On the embedded default's shape it measured worse (bench/results/base-zsnr): off by default
    zero_terminal_snr: bool = False
    # after the VAE is trained, set its posterior's log-variance to the floor (-30: std 3e-7), so the
    # latents every later stage encodes (base U-Net, LoRA, scaling factor) are the posterior means; a
    # 16x16 VAE under a light KL leaves much posterior noise (one of its 4 channels carries nothing else)
    deterministic_encoder: bool = False


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode char, the reversible byte-level BPE alphabet (GPT-2/CLIP):
    printable Latin-1 bytes map to themselves, the others to code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def word_merges(words) -> list[tuple[str, str]]:
    """Left-to-right merges that turn each word (lowercase) into one token ending in </w>."""
    b2u = bytes_to_unicode()
    merges: list[tuple[str, str]] = []
    seen = set()
    for word in words:
        chars = [b2u[b] for b in word.lower().encode("utf-8")]
        if len(chars) < 2:
            continue
        chars[-1] += "</w>"
        left = chars[0]
        for c in chars[1:]:
            if (left, c) not in seen:
                seen.add((left, c))
                merges.append((left, c))
            left += c
    return merges


def write_tokenizer(folder: str | Path, words=()) -> Path:
    """Write vocab.json + merges.txt (+ configs) for a byte-level CLIP tokenizer, and
    save it in the fast format through `CLIPTokenizer.from_pretrained`."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for ch in b2u.values():
        vocab.setdefault(ch, len(vocab))
    for ch in b2u.values():
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for tok in SPECIAL_TOKENS:
        vocab.setdefault(tok, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH,
            "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1],
            "unk_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[1],
        }))
        tok = CLIPTokenizer.from_pretrained(tmp)
    if len(tok) != len(vocab):
        raise RuntimeError(f"tokenizer built with {len(tok)} tokens, expected {len(vocab)}")
    tok.model_max_length = MAX_LENGTH
    tok.save_pretrained(folder)
    return folder


def prompt_words(class_names, template: str = PROMPT_TEMPLATE) -> list[str]:

    text = " ".join(template.format(c) for c in class_names)
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def build_tokenizer(class_names=(), template: str = PROMPT_TEMPLATE):

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(tmp, prompt_words(class_names, template))
        return CLIPTokenizer.from_pretrained(tmp)


def build_text_encoder(cfg: TinySDConfig, tokenizer):

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.cross_attention_dim, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=cfg.cross_attention_dim,
    ))


def build_vae(cfg: TinySDConfig):

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=16,
        sample_size=cfg.image_size,
    )


def latent_size(cfg: TinySDConfig) -> int:
    return cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)


def build_unet(cfg: TinySDConfig):

    n = len(cfg.unet_channels)
    attn = [cfg.unet_top_attention or i > 0 for i in range(n - 1)] + [False]  # the lowest block never attends
    if not any(attn):
        raise ValueError(f"a U-Net with channels {tuple(cfg.unet_channels)} and no top-block attention has no "
                         "cross-attention (text and difficulty tokens could not enter): give it at least 3 levels "
                         "or turn top-block attention on (unet_top_attention=True, --unet-top-attention)")
    sd2 = cfg.prediction_type == "v_prediction"
    return UNet2DConditionModel(
        sample_size=latent_size(cfg), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.unet_layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=32, use_linear_projection=sd2,
    )


def build_scheduler(cfg: TinySDConfig, kind: str = "ddim"):
    """SD's noise schedule (scaled-linear betas) with `clip_sample=False` (we denoise latents)."""

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type=cfg.prediction_type, clip_sample=False)
    if cfg.zero_terminal_snr:
        if cfg.prediction_type != "v_prediction":
            raise ValueError(f"a zero-terminal-SNR schedule needs prediction_type='v_prediction' (at pure noise an "
                             f"{cfg.prediction_type} model cannot say the image), got {cfg.prediction_type!r}: "
                             "pass --prediction-type v_prediction with --zero-terminal-snr")
        common.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    if kind == "ddpm":
        return DDPMScheduler(**common)
    return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)


def build_components(cfg: TinySDConfig | None = None, class_names=(), seed: int = 0) -> dict:
    """Randomly initialised tiny SD components (deterministic for a seed)."""

    cfg = cfg or TinySDConfig()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(class_names)
    return dict(vae=build_vae(cfg), text_encoder=build_text_encoder(cfg, tokenizer), tokenizer=tokenizer,
                unet=build_unet(cfg), scheduler=build_scheduler(cfg))


def save_sd_folder(folder: str | Path, components: dict, tiny_config: TinySDConfig | None = None) -> Path:
    """Write a regular StableDiffusionPipeline folder (no safety checker)."""

    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="9MB")  # Spaces: files < 10 MiB
    if tiny_config is not None:
        (Path(folder) / "tiny_sd_config.json").write_text(json.dumps(asdict(tiny_config), indent=2) + "\n")
    return Path(folder)
