"""The guide transformer: an autoregressive model of the VQ tokens of 1 fps keyframes given audio."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from a2p.config.audio import FEATURE_DIMS
from a2p.errors import ConfigError


@dataclass
class GuideConfig:
    """Sizes of the guide transformer; `codes` and `levels` must match the VQ it predicts."""

    codes: int = 1024
    """Codes per VQ level (the VQ's `codes`)."""
    levels: int = 4
    """Residual VQ levels: tokens per keyframe."""
    audio_dim: int = FEATURE_DIMS["mel"]
    """Width of the 100 Hz audio features; must equal the featurizer's `dim`."""
    width: int = 512
    """Transformer width (8 heads of 64, the reference's `--dim 64`)."""
    layers: int = 6
    """Decoder layers (the reference's `--layers 6`)."""
    heads: int = 8
    """Attention heads."""
    ff_dim: int = 2048
    """Hidden width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout in attention and feed-forward blocks while training."""
    audio_dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Dilations of the residual conv stack the audio features pass before cross-attention."""

    def __post_init__(self) -> None:
        for name in ("codes", "levels", "audio_dim", "width", "layers", "heads", "ff_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"guide.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ConfigError(f"guide.width ({self.width}) must split into {self.heads} heads of even width")


GUIDE_PRESETS = {
    "paper": GuideConfig(),
    "debug": GuideConfig(codes=16, levels=2, width=32, layers=2, heads=2, ff_dim=64, audio_dilations=(1, 2)),
}
"""`paper`: 6 layers, heads of 64, over 4 levels x 1024 codes; `debug`: tiny (matches the debug VQ)."""


def guide_preset(size: str) -> GuideConfig:
    """A fresh copy of the named guide preset."""
    if size not in GUIDE_PRESETS:
        raise ConfigError(f"unknown guide size {size!r} (choose from {sorted(GUIDE_PRESETS)})")
    return dataclasses.replace(GUIDE_PRESETS[size])
