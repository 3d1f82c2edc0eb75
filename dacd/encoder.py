"""DifficultyEncoder: (class, difficulty s) -> K tokens of the U-Net's cross-attention width.

The tokens are appended to the text-encoder tokens along the sequence axis,
`tau = E_text(prompt) ⊕ E_d(y, s)`. A learned null-difficulty token set replaces all
K tokens when difficulty is dropped (training) or unconditioned (guidance).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class DifficultyEncoder(ModelMixin, ConfigMixin):
    """MLP over `[class embedding ⊕ features(s)]` emitting `num_tokens` tokens.

    `s_embedding="fourier"` (default) feeds `s` as `[s, sin(2π f s), cos(2π f s)]` for
    geometric frequencies f. Why not the paper's plain `[y ⊕ s]`: a raw scalar enters
    the first layer along one direction only, so a small MLP trained on data where most
    `s` sit near 0 tends to map the whole range to nearly the same tokens; Fourier
    features (as diffusion U-Nets do for the timestep) give it a well-conditioned
    basis in which nearby difficulties stay distinguishable. `s_embedding="linear"`
    keeps the paper's plain concatenation for comparison.
    """

    @register_to_config
    def __init__(self, *, num_classes: int, cross_attention_dim: int, num_tokens: int = 4,
                 class_embed_dim: int = 64, hidden_dim: int = 256, num_frequencies: int = 8,
                 max_frequency: float = 16.0, s_embedding: str = "fourier"):
        super().__init__()
        if s_embedding not in ("fourier", "linear"):
            raise ValueError(f"s_embedding must be 'fourier' or 'linear', got {s_embedding!r}")
        self.class_embedding = nn.Embedding(num_classes, class_embed_dim)
        freqs = torch.logspace(0, math.log10(max_frequency), num_frequencies) if num_frequencies else torch.zeros(0)
        self.register_buffer("frequencies", freqs, persistent=False)
        s_dim = 1 + 2 * num_frequencies if s_embedding == "fourier" else 1
        self.mlp = nn.Sequential(
            nn.Linear(class_embed_dim + s_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )
        # Text-encoder outputs leave CLIP through a final LayerNorm; matching their scale
        # keeps the difficulty tokens from being drowned out or dominating attention.
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.null_tokens = nn.Parameter(torch.randn(num_tokens, cross_attention_dim) * 0.02)

    def s_features(self, s: torch.Tensor) -> torch.Tensor:
        s = s[:, None]
        if self.config.s_embedding == "linear":
            return s
        angles = 2 * math.pi * s * self.frequencies.to(s)
        return torch.cat([s, angles.sin(), angles.cos()], dim=-1)

    def forward(self, class_labels: torch.Tensor, difficulty: torch.Tensor) -> torch.Tensor:
        """class ids (B,) and s in [0, 1] (B,) -> tokens (B, K, D)."""
        dtype = self.class_embedding.weight.dtype
        class_labels = torch.as_tensor(class_labels, device=self.device).long().reshape(-1)
        difficulty = torch.as_tensor(difficulty, device=self.device).to(dtype).reshape(-1)
        if class_labels.shape != difficulty.shape:
            raise ValueError(f"class_labels {tuple(class_labels.shape)} and difficulty "
                             f"{tuple(difficulty.shape)} must have the same length")
        h = torch.cat([self.class_embedding(class_labels), self.s_features(difficulty)], dim=-1)
        tokens = self.mlp(h).view(-1, self.config.num_tokens, self.config.cross_attention_dim)
        return self.norm(tokens)

    def null(self, batch_size: int) -> torch.Tensor:
        """The null-difficulty token set, repeated for a batch: (B, K, D)."""
        return self.null_tokens[None].expand(batch_size, -1, -1)
