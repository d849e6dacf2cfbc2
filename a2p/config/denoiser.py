"""Hyper-parameters of the face and body diffusion denoisers, with named `paper`, `a2p` and `debug` presets.

`paper` is the reference's configuration (facebookresearch/audio2photoreal, utils/model_util.py and
the README's training commands): face width 512 x 8 layers, body width 256 x 6 layers, 8 heads,
feed-forward 1024, dropout 0.1, gelu; the face passes its audio tokens through a 2-layer encoder;
the body cross-attends to guide poses and ends in a causal dilated conv stack (dilations
1, 2, 3, 1, 2, 3, first hidden width 256, dropout 0.2); with its positional scheme, positional
null tokens and the vq-wav2vec (+ lip) audio widths it is the released models' architecture.
`a2p` keeps the sizes and makes a2p's choices instead (see `DENOISER_PRESETS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from a2p.config.audio import FEATURE_DIMS, REFERENCE_FEATURE_DIMS
from a2p.constants import FACE_DIM, POSE_DIM
from a2p.errors import ConfigError

DenoiserModel = Literal["face", "body"]
"""The two diffusion models."""

DenoiserSize = Literal["paper", "a2p", "debug"]
"""Named sizes of each model."""

Positions = Literal["time", "reference"]
"""How attention sees positions (see `a2p.models.denoiser`).

`time`: a2p's scheme, rotary on per-head queries and keys after the projections, every sequence
on one time axis in motion frames (audio at its block centres, keyframe k at frame 30 k), time
tokens unrotated: scores depend on time offsets only. `reference`: the reference's scheme, rotary
on the attention inputs over the full width (interleaved pairs) at the integer index of each
sequence, the two time tokens after the audio tokens; needed to run its checkpoints.
"""


@dataclass
class DenoiserConfig:
    """One FiLM transformer denoiser; the face and body models differ only in these values."""

    motion_dim: int = FACE_DIM
    """Width of one motion frame the model denoises (256 face codes or 104 joint angles)."""
    audio_dim: int = FEATURE_DIMS["mel"]
    """Width of the 100 Hz audio features; must equal the featurizer's `dim`."""
    width: int = 512
    """Transformer width (the reference's latent_dim)."""
    layers: int = 8
    """FiLM transformer decoder layers."""
    heads: int = 8
    """Attention heads in every attention block."""
    ff_dim: int = 1024
    """Hidden width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout on attention weights, sub-layer outputs and feed-forward hidden units."""
    audio_encoder_layers: int = 2
    """Rotary transformer encoder layers the audio tokens pass before cross-attention (0: none)."""
    time_tokens: int = 2
    """Diffusion-time tokens appended to the audio tokens in cross-attention."""
    guide_dim: int = 0
    """Width of one guide pose for the second cross-attention (1 fps keyframes); 0: no guide."""
    conv_head_dilations: tuple[int, ...] = ()
    """Dilations of the causal conv stack after the transformer (kernel 3 each); empty: no conv head."""
    conv_head_width: int = 256
    """Output width of the conv head's first layer; the other layers keep `motion_dim` channels."""
    conv_head_dropout: float = 0.2
    """Dropout after every conv of the head while training."""
    rotary_theta: float = 10_000.0
    """Base period of the rotary position embedding."""
    positions: Positions = "time"
    """Rotary scheme: a2p's time-aligned per-head rotary, or the reference's (`reference`)."""
    null_audio_tokens: int = 1
    """Learned null audio tokens for classifier-free guidance: 1 shared by every position (a2p,
    any clip length), or one per position (the reference's 1998, sliced to the clip; a window then
    holds at most that many audio features)."""
    null_guide_tokens: int = 1
    """Learned null guide keyframes: 1 shared, or one per keyframe position (the reference's 20)."""

    def __post_init__(self) -> None:
        for name in ("motion_dim", "audio_dim", "width", "layers", "heads", "ff_dim", "time_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"denoiser.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ConfigError(
                f"denoiser.width ({self.width}) must split into {self.heads} heads of even width "
                "(rotary embeddings rotate pairs of channels)"
            )
        if self.positions not in ("time", "reference"):
            raise ConfigError(f"denoiser.positions must be 'time' or 'reference', got {self.positions!r}")
        if self.null_audio_tokens < 1 or self.null_guide_tokens < 1:
            raise ConfigError("denoiser.null_audio_tokens and denoiser.null_guide_tokens must be positive")
        if self.audio_encoder_layers < 0 or self.guide_dim < 0:
            raise ConfigError("denoiser.audio_encoder_layers and denoiser.guide_dim must not be negative")
        if any(d < 1 for d in self.conv_head_dilations):
            raise ConfigError(
                f"denoiser.conv_head_dilations must be positive, got {self.conv_head_dilations}"
            )
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.conv_head_dropout < 1.0:
            raise ConfigError("denoiser dropout probabilities must lie in [0, 1)")


_FACE_A2P = DenoiserConfig()
_BODY_A2P = DenoiserConfig(
    motion_dim=POSE_DIM,
    width=256,
    layers=6,
    audio_encoder_layers=0,
    guide_dim=POSE_DIM,
    conv_head_dilations=(1, 2, 3, 1, 2, 3),
)
_REFERENCE = {"positions": "reference", "null_audio_tokens": 1998}
"""The reference's positions and one null token per audio position (1998: a 600-frame window)."""

DENOISER_PRESETS: dict[str, dict[str, DenoiserConfig]] = {
    "face": {
        "paper": dataclasses.replace(
            _FACE_A2P, audio_dim=REFERENCE_FEATURE_DIMS["vq-wav2vec+lip"], **_REFERENCE
        ),
        "a2p": _FACE_A2P,
        "debug": dataclasses.replace(
            _FACE_A2P, width=32, layers=2, heads=2, ff_dim=64, audio_encoder_layers=1
        ),
    },
    "body": {
        "paper": dataclasses.replace(
            _BODY_A2P, audio_dim=REFERENCE_FEATURE_DIMS["vq-wav2vec"], null_guide_tokens=20, **_REFERENCE
        ),
        "a2p": _BODY_A2P,
        "debug": dataclasses.replace(
            _BODY_A2P,
            width=32,
            layers=2,
            heads=2,
            ff_dim=64,
            conv_head_dilations=(1, 2, 3),
            conv_head_width=32,
        ),
    },
}
"""Named configurations per model. `paper`: the reference's released architecture (its sizes,
positions, positional null tokens and vq-wav2vec (+ lip) audio widths; what `a2p import-reference`
builds). `a2p`: the same sizes with a2p's choices: time-aligned per-head rotary, so attention
depends on time offsets only; one shared null token, so a window may be any length; mel
features, which need no pretrained encoder. `debug`: tiny, a2p's choices, for tests and the demo."""


def denoiser_preset(model: str, size: str) -> DenoiserConfig:
    """A fresh copy of the named preset, e.g. `denoiser_preset("body", "paper")`."""
    if model not in DENOISER_PRESETS:
        raise ConfigError(f"unknown denoiser model {model!r} (choose from {sorted(DENOISER_PRESETS)})")
    sizes = DENOISER_PRESETS[model]
    if size not in sizes:
        raise ConfigError(f"unknown size {size!r} for the {model} denoiser (choose from {sorted(sizes)})")
    return dataclasses.replace(sizes[size])
