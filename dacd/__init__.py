"""dacd: Difficulty-Aware Controlled Diffusion.

Synthesize classifier training data with a difficulty dial: a Stable Diffusion model
conditioned on a classifier-derived difficulty score through a small encoder whose
tokens join the text tokens in cross-attention.
"""

__version__ = "0.1.0"
