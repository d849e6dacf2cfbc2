"""The guide transformer: an autoregressive model of the VQ tokens of 1 fps keyframes given audio.

`paper` is the reference's guide (model/guide.py with train_guide's `--layers 6 --dim 64` from
its README): a FiLM transformer decoder of width 64, 6 layers, 4 heads, feed-forward 1024 and
dropout 0.1 over 4 levels x 1024 VQ codes. Its audio passes two blocks of six dilated convs
(dilations 1, 2, 3, 1, 2, 3, kernel 3, leaky ReLU, dropout 0.2) 1024 channels wide and a 1x1 conv
before cross-attention; the audio is replaced by a learnt null condition with p = 0.2 while
training, and the cross-entropy uses label smoothing 0.1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from a2p.config.audio import FEATURE_DIMS, REFERENCE_FEATURE_DIMS
from a2p.config.denoiser import Positions
from a2p.errors import ConfigError


@dataclass
class GuideConfig:
    """Sizes of the guide transformer; `codes` and `levels` must match the VQ whose tokens it predicts."""

    codes: int = 1024
    """Codes per VQ level (the VQ's `codes`)."""
    levels: int = 4
    """Residual VQ levels: tokens per keyframe (the VQ's `levels`)."""
    audio_dim: int = FEATURE_DIMS["mel"]
    """Width of the 100 Hz audio features; must equal the featurizer's `dim`."""
    width: int = 64
    """Transformer width (the reference's --dim 64)."""
    layers: int = 6
    """FiLM decoder layers (the reference's --layers 6)."""
    heads: int = 4
    """Attention heads of every attention block."""
    ff_dim: int = 1024
    """Hidden width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout on attention weights and sub-layer outputs while training."""
    audio_width: int = 1024
    """Channels of the audio conv stack (the reference's: as wide as its 1024 frozen audio features)."""
    audio_dilations: tuple[int, ...] = (1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3)
    """Dilations of the audio convs, one conv each."""
    audio_kernel_size: int = 3
    """Kernel size of the audio convs (odd: they keep the length and stay centred)."""
    audio_dropout: float = 0.2
    """Dropout after every audio conv while training."""
    cond_drop_prob: float = 0.2
    """Probability of replacing a clip's audio by the learnt null condition while training."""
    label_smoothing: float = 0.1
    """Label smoothing of the training cross-entropy."""
    rotary_theta: float = 10_000.0
    """Base period of the rotary embeddings (token index in self-attention, time in cross-attention)."""
    positions: Positions = "time"
    """Rotary scheme (as the denoiser's): a2p's per-head rotary with cross-attention on the motion
    time axis, or the reference's input rotation at token and audio indices (`reference`)."""
    audio_padding: Literal["same", "valid"] = "same"
    """`same`: zero-padded convs keep the audio length and stay centred (a2p); `valid`: unpadded,
    as the reference's, 48 features shorter after the 12 convs of `paper`."""
    level_embedding: bool = True
    """Add an embedding of the VQ level each input predicts (a2p's; the reference has none)."""
    out_norm: bool = True
    """A LayerNorm before the output head (a2p's; the reference has none)."""
    null_audio_tokens: int = 1
    """Learned null audio tokens: 1 shared by all positions (a2p), or the reference's 1998 positional ones."""

    def __post_init__(self) -> None:
        for name in ("codes", "levels", "audio_dim", "width", "layers", "heads", "ff_dim", "audio_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"guide.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ConfigError(f"guide.width ({self.width}) must split into {self.heads} heads of even width")
        if min(self.audio_dilations, default=1) < 1:
            raise ConfigError(f"guide.audio_dilations must be positive, got {list(self.audio_dilations)}")
        if self.audio_kernel_size < 1 or (self.audio_padding == "same" and self.audio_kernel_size % 2 == 0):
            raise ConfigError(
                f"guide.audio_kernel_size must be odd with same padding, got {self.audio_kernel_size}"
            )
        if self.positions not in ("time", "reference") or self.audio_padding not in ("same", "valid"):
            raise ConfigError(
                f"guide.positions must be 'time' or 'reference' and guide.audio_padding 'same' or 'valid', "
                f"got {self.positions!r}, {self.audio_padding!r}"
            )
        if self.null_audio_tokens < 1:
            raise ConfigError(f"guide.null_audio_tokens must be positive, got {self.null_audio_tokens}")
        for name in ("dropout", "audio_dropout", "cond_drop_prob", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"guide.{name} must lie in [0, 1), got {getattr(self, name)}")


_GUIDE_A2P = GuideConfig()

GUIDE_PRESETS = {
    "paper": dataclasses.replace(
        _GUIDE_A2P,
        audio_dim=REFERENCE_FEATURE_DIMS["vq-wav2vec"],
        positions="reference",
        audio_padding="valid",
        level_embedding=False,
        out_norm=False,
        null_audio_tokens=1998,
    ),
    "a2p": _GUIDE_A2P,
    "debug": GuideConfig(
        codes=16, levels=2, width=32, layers=2, heads=2, ff_dim=64, audio_width=32, audio_dilations=(1, 2)
    ),
}
"""`paper`: the reference's released guide (width 64, 6 layers, over 4 x 1024 tokens; its input
rotary, unpadded audio convs, no level embedding or output norm, positional null tokens,
vq-wav2vec features). `a2p`: the same sizes with a2p's choices (time-aligned rotary, padded convs
that keep every audio frame, a level embedding and an output norm, one null token, mel
features). `debug`: tiny, matches the debug VQ."""


def guide_preset(size: str) -> GuideConfig:
    """A fresh copy of the named guide preset."""
    if size not in GUIDE_PRESETS:
        raise ConfigError(f"unknown guide size {size!r} (choose from {sorted(GUIDE_PRESETS)})")
    return dataclasses.replace(GUIDE_PRESETS[size])
