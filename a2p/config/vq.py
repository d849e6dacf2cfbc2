"""The body residual VQ-VAE: sizes, codebook learning and loss (`paper` after the reference's train_vq).

The reference trains `TemporalVertexCodec(n_vertices=104, latent_dim=64, categories=1024,
residual_depth=4)` (README: `--code_dim 1024 --output_emb_width 64 --depth 4 --commit 0.02
--loss_vel 0.0`), whose codebooks use decay 0.99 and 10 k-means iterations; its conv encoder and
decoder are as wide as the code vectors. Its dead-code threshold (2 vectors per step) depends on
the batch size and its restart was overwritten by the same step's EMA update; a2p restarts codes
whose usage falls below a fraction of the mean usage instead, the same in steps at any batch size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from a2p.constants import POSE_DIM
from a2p.errors import ConfigError


@dataclass
class VQConfig:
    """A causal temporal conv encoder/decoder around a residual VQ of `levels` EMA codebooks."""

    pose_dim: int = POSE_DIM
    """Width of one keyframe pose."""
    width: int = 64
    """Channels of the conv encoder and decoder (the reference's output_emb_width)."""
    dilations: tuple[int, ...] = (1, 2, 3, 1)
    """Dilations of the causal temporal convs of the encoder, and again of the decoder."""
    kernel_size: int = 2
    """Kernel size of those temporal convs."""
    code_dim: int = 64
    """Width of a code vector (the reference's output_emb_width)."""
    codes: int = 1024
    """Codes per codebook (the reference's code_dim)."""
    levels: int = 4
    """Residual quantization levels (the reference's depth)."""
    decay: float = 0.99
    """EMA decay of the codebook statistics."""
    dead_fraction: float = 0.05
    """Codes whose EMA usage falls below this fraction of the mean code's restart on data; 0: never."""
    kmeans_iters: int = 10
    """Lloyd iterations of the k-means initialisation on the first training batch."""
    commitment: float = 0.02
    """Weight of the commitment loss (the reference's --commit)."""
    recon_loss: Literal["smooth_l1", "mse"] = "smooth_l1"
    """Reconstruction loss per pose channel: Huber with threshold 1 (the reference's SmoothL1Loss) or squared error."""
    velocity_weight: float = 0.0
    """Weight of the same loss on keyframe-to-keyframe differences (the reference's --loss_vel, 0 in its README)."""

    def __post_init__(self) -> None:
        for name in ("pose_dim", "width", "kernel_size", "code_dim", "codes", "levels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vq.{name} must be positive, got {getattr(self, name)}")
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError(f"vq.dilations must be positive integers, got {list(self.dilations)}")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"vq.decay must lie in (0, 1), got {self.decay}")
        for name in ("dead_fraction", "kmeans_iters", "commitment", "velocity_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"vq.{name} must not be negative, got {getattr(self, name)}")


VQ_PRESETS = {
    "paper": VQConfig(),
    "a2p": VQConfig(),
    "debug": VQConfig(width=16, dilations=(1, 2), code_dim=8, codes=16, levels=2, kmeans_iters=3),
}
"""`paper`: the reference's train_vq (4 levels x 1024 codes of width 64, 64-wide convs), which a2p's
VQ computes exactly; `a2p`: the same (named so every model has the preset); `debug`: tiny."""


def vq_preset(size: str) -> VQConfig:
    """A fresh copy of the named VQ preset."""
    if size not in VQ_PRESETS:
        raise ConfigError(f"unknown VQ size {size!r} (choose from {sorted(VQ_PRESETS)})")
    return dataclasses.replace(VQ_PRESETS[size])
