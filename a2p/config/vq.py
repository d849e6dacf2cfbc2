"""The body residual VQ-VAE: sizes and codebook settings (`paper` after the reference's train_vq)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from a2p.constants import POSE_DIM
from a2p.errors import ConfigError


@dataclass
class VQConfig:
    """A temporal conv encoder/decoder around a residual VQ of `levels` EMA codebooks."""

    pose_dim: int = POSE_DIM
    """Width of one keyframe pose."""
    width: int = 512
    """Channels of the conv encoder and decoder."""
    blocks: int = 3
    """Residual dilated conv blocks in the encoder and in the decoder."""
    code_dim: int = 64
    """Width of a code vector (the reference's output_emb_width)."""
    codes: int = 1024
    """Codes per codebook (the reference's code_dim)."""
    levels: int = 4
    """Residual quantization levels (the reference's depth)."""
    decay: float = 0.99
    """EMA decay of the codebook statistics."""
    commitment: float = 0.02
    """Weight of the commitment loss ||z - sg(q)||^2."""
    dead_threshold: float = 1.0
    """Codes whose EMA usage falls below this many vectors per update are restarted on data."""
    kmeans_iters: int = 10
    """Lloyd iterations of the k-means initialisation on the first training batch."""

    def __post_init__(self) -> None:
        for name in ("pose_dim", "width", "code_dim", "codes", "levels", "blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vq.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"vq.decay must lie in (0, 1), got {self.decay}")


VQ_PRESETS = {
    "paper": VQConfig(),
    "debug": VQConfig(width=32, blocks=1, code_dim=8, codes=16, levels=2, kmeans_iters=3),
}
"""`paper`: 4 levels x 1024 codes of width 64 (the reference's train_vq); `debug`: tiny."""


def vq_preset(size: str) -> VQConfig:
    """A fresh copy of the named VQ preset."""
    if size not in VQ_PRESETS:
        raise ConfigError(f"unknown VQ size {size!r} (choose from {sorted(VQ_PRESETS)})")
    return dataclasses.replace(VQ_PRESETS[size])
