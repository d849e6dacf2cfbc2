"""The face and body diffusion denoisers: a FiLM transformer decoder predicting clean motion x0.

Architecture after `FiLMTransformer` in facebookresearch/audio2photoreal (model/diffusion.py),
itself after EDGE (Tseng et al., 2023):

- motion frames (B, T, D_motion) are projected to the model width and pass `layers` FiLM decoder
  layers: rotary self-attention, cross-attention to the audio tokens plus `time_tokens`
  diffusion-time tokens, optionally a second cross-attention to guide poses (body), and a
  feed-forward block, each sub-layer modulated by FiLM from time embedding + pooled audio;
- audio features (100 Hz) are projected to tokens, optionally refined by a rotary transformer
  encoder (face), and stay at 100 Hz: cross-attention keeps the audio's full time resolution
  (the reference feeds its 100 Hz wav2vec tokens the same way);
- the body model ends in a causal dilated conv stack over the predicted frames.

Time alignment. Every sequence lives on one time axis in motion frames: motion frame m at
position m, audio feature n at (n + 1/2) * FPS / FEATURE_RATE_HZ - 1/2 (the centres of their
sample blocks), keyframe k at k * KEYFRAME_INTERVAL. Rotary embeddings on per-head queries and
keys then make every attention score depend on the time offset between a motion frame and an
audio token or keyframe. Time-token keys are not rotated: they sit at no time, and a frame's
score for them varies with the frame's own position (the reference rotated them too).

`positions: reference` with positional null tokens (`null_audio_tokens=1998`,
`null_guide_tokens=20`) is instead the reference's own scheme, the released checkpoints'
architecture: inputs rotated before the projections over the full width (interleaved pairs) at
integer indices, motion 0..T-1, audio 0..F-1 with the two time tokens at F and F+1, keyframes
0..K-1 (tested against the reference's FiLMTransformer in tests/test_reference_denoiser.py).

Conditioning is split from denoising: `encode_condition` turns a clip's audio features (and
guide poses) into a `Condition` - the pooled FiLM vector and the projected keys/values of every
cross-attention layer - once per clip; `forward(x_t, t, condition)` then only runs what depends
on x_t and t. Classifier-free guidance uses learned null tokens: rows whose `keep_mask` is False
see the null audio (and null guide) instead of theirs, so conditional and unconditional rows run
in one batch (`expand_for_cfg`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from a2p.config.denoiser import DenoiserConfig
from a2p.constants import KEYFRAME_INTERVAL
from a2p.models.layers import (
    AnyRotation,
    CausalDilatedConvStack,
    FiLMDecoderLayer,
    InputRotary,
    KeyValue,
    RotaryEmbedding,
    TimestepEmbedding,
    TransformerEncoderLayer,
    audio_positions,
    init_xavier_,
)

TIME_HIDDEN_MULT = 4
"""The timestep embedding's hidden width, in multiples of the model width (as the reference)."""


def guide_positions(length: int, device: torch.device) -> Tensor:
    """Positions (length,) of guide keyframes in motion frames: keyframe k is frame k * 30."""
    return torch.arange(length, device=device, dtype=torch.float32) * KEYFRAME_INTERVAL


@dataclass
class Condition:
    """Everything the denoiser needs from a clip's audio and guide poses, computed once per clip.

    Rows whose keep mask was False hold the learned null condition. Use `map` and `cat` to
    repeat, select or concatenate rows; `Denoiser.expand_for_cfg` appends unconditional rows.
    """

    pooled: Tensor
    """(B, W) pooled-audio vector added to the time embedding for FiLM."""
    audio_kv: tuple[KeyValue, ...]
    """Per decoder layer: keys and values of the audio tokens, each (B, H, T_audio, W / H); keys rotated."""
    guide_kv: tuple[KeyValue, ...] | None = None
    """Per decoder layer: keys and values of the guide poses, each (B, H, T // 30, W / H); None without a guide."""

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> Condition:
        """Apply fn to every tensor, e.g. `c.map(lambda x: x.repeat_interleave(3, 0))` for 3 repetitions."""

        def over(kvs: tuple[KeyValue, ...] | None) -> tuple[KeyValue, ...] | None:
            return None if kvs is None else tuple((fn(k), fn(v)) for k, v in kvs)

        return Condition(fn(self.pooled), over(self.audio_kv), over(self.guide_kv))

    @staticmethod
    def cat(conditions: list[Condition]) -> Condition:
        """Concatenate conditions along the batch (their audio and guide lengths must agree)."""
        first = conditions[0]

        def cat_kv(field: str) -> tuple[KeyValue, ...] | None:
            if getattr(first, field) is None:
                return None
            layers = zip(*(getattr(c, field) for c in conditions))
            return tuple((torch.cat([k for k, _ in kvs]), torch.cat([v for _, v in kvs])) for kvs in layers)

        return Condition(torch.cat([c.pooled for c in conditions]), cat_kv("audio_kv"), cat_kv("guide_kv"))


class ConditionInputs(NamedTuple):
    """Raw conditioning for `Denoiser.forward`, encoded inside the call.

    Training passes these so the whole computation runs inside one `forward`, the call that
    DDP and DeepSpeed wrap; a sampler encodes once with `encode_condition` and passes the
    `Condition` instead.
    """

    audio: Tensor
    """(B, T_audio, D_audio) audio features at 100 Hz."""
    guide: Tensor | None = None
    """(B, T // 30, D_guide) guide poses, one every KEYFRAME_INTERVAL frames (body model)."""
    keep_mask: Tensor | None = None
    """(B,) bool: False rows use the null audio (and null guide); None keeps all rows."""
    guide_keep_mask: Tensor | None = None
    """(B,) bool for the guide alone; None: the same as keep_mask."""


class Denoiser(nn.Module):
    """FiLM transformer denoiser mapping (x_t, t, condition) to the predicted clean motion x0."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        width, heads = config.width, config.heads
        time_hidden = TIME_HIDDEN_MULT * width

        self.reference_positions = config.positions == "reference"
        if self.reference_positions:
            self.rotary: nn.Module = InputRotary(width, config.rotary_theta)
        else:
            self.rotary = RotaryEmbedding(width // heads, config.rotary_theta)
        self.motion_in = nn.Linear(config.motion_dim, width)

        self.time_embedding = TimestepEmbedding(width, time_hidden)
        self.time_to_film = nn.Linear(time_hidden, width)
        self.time_to_tokens = nn.Linear(time_hidden, config.time_tokens * width)

        self.audio_in = nn.Linear(config.audio_dim, width)
        self.audio_encoder = nn.ModuleList(
            TransformerEncoderLayer(width, heads, config.ff_dim, config.dropout)
            for _ in range(config.audio_encoder_layers)
        )
        self.audio_pool = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.memory_norm = nn.LayerNorm(width)
        # a2p: one null token for every audio position (and one null keyframe), so the
        # unconditional model works at any clip length; the reference: one per position.
        self.null_audio = nn.Parameter(torch.randn(1, config.null_audio_tokens, width))
        self.null_pooled = nn.Parameter(torch.randn(1, width))

        self.has_guide = config.guide_dim > 0
        if self.has_guide:
            self.guide_in = nn.Linear(config.guide_dim, width)
            self.guide_norm = nn.LayerNorm(width)
            self.null_guide = nn.Parameter(torch.randn(1, config.null_guide_tokens, width))

        self.layers = nn.ModuleList(
            FiLMDecoderLayer(width, heads, config.ff_dim, config.dropout, cross_attentions=1 + self.has_guide)
            for _ in range(config.layers)
        )
        self.motion_out = nn.Linear(width, config.motion_dim)

        self.conv_head: CausalDilatedConvStack | None = None
        if config.conv_head_dilations:
            dim, n = config.motion_dim, len(config.conv_head_dilations)
            # The first conv widens (the reference: max(256, D)), the next narrows back to D.
            hidden = [config.conv_head_width] + [dim] * (n - 1) if n > 1 else [dim]
            self.conv_head = CausalDilatedConvStack(
                [dim, *hidden], config.conv_head_dilations, dropout=config.conv_head_dropout
            )
            self.conv_out = nn.Conv1d(dim, dim, kernel_size=1)

        for module in (self.audio_encoder, self.layers, self.motion_out, self.conv_head):
            if module is not None:
                init_xavier_(module)

    def encode_condition(
        self,
        audio: Tensor,
        guide: Tensor | None = None,
        keep_mask: Tensor | None = None,
        guide_keep_mask: Tensor | None = None,
    ) -> Condition:
        """Encode a clip's conditioning once; rows with keep_mask False get the null condition.

        audio (B, T_audio, D_audio) features at 100 Hz; guide (B, T // 30, D_guide) keyframes,
        required by the body model and refused by the face model; keep_mask (B,) bool; the guide
        follows keep_mask unless guide_keep_mask is given (the reference drops audio and guide
        independently during training).
        """
        batch, length, dim = audio.shape
        if dim != self.config.audio_dim:
            raise ValueError(
                f"audio features have width {dim}, this denoiser expects {self.config.audio_dim}"
            )
        if (guide is not None) != self.has_guide:
            raise ValueError("the guide poses are required by models with guide_dim > 0 and only by them")
        device = audio.device

        tokens = self.audio_in(audio)  # (B, T_audio, W)
        rotation = self._audio_rotation(length, device)
        for layer in self.audio_encoder:
            tokens = layer(tokens, rotation)
        pooled = self.audio_pool(tokens.mean(dim=1))  # (B, W)
        if keep_mask is not None:
            null = _null_tokens(self.null_audio, length, "audio features").to(tokens.dtype)
            tokens = torch.where(keep_mask[:, None, None], tokens, null)
            pooled = torch.where(keep_mask[:, None], pooled, self.null_pooled.to(pooled.dtype))
        audio_kv = self._audio_kv(tokens, rotation)

        guide_kv = None
        if guide is not None:
            if guide.shape[0] != batch:
                raise ValueError(f"guide batch {guide.shape[0]} differs from audio batch {batch}")
            keyframes = self.guide_norm(self.guide_in(guide))  # (B, T // 30, W)
            guide_keep_mask = keep_mask if guide_keep_mask is None else guide_keep_mask
            if guide_keep_mask is not None:
                null = _null_tokens(self.null_guide, keyframes.shape[1], "keyframes").to(keyframes.dtype)
                keyframes = torch.where(guide_keep_mask[:, None, None], keyframes, null)
            guide_kv = self._guide_kv(keyframes)
        return Condition(pooled, audio_kv, guide_kv)

    def null_condition(
        self, batch_size: int, audio_length: int, guide_length: int | None = None
    ) -> Condition:
        """The unconditional condition for `batch_size` rows of the given audio (and guide) length."""
        device = self.null_audio.device
        tokens = _null_tokens(self.null_audio, audio_length, "audio features")
        audio_kv = self._audio_kv(tokens, self._audio_rotation(audio_length, device))
        guide_kv = None
        if self.has_guide:
            if guide_length is None:
                raise ValueError("the null condition of a guided model needs the guide length")
            guide_kv = self._guide_kv(_null_tokens(self.null_guide, guide_length, "keyframes"))
        null = Condition(self.null_pooled, audio_kv, guide_kv)
        return null.map(lambda x: x.expand(batch_size, *x.shape[1:]))

    def expand_for_cfg(self, condition: Condition) -> Condition:
        """[condition; null condition]: batch 2B, conditional rows first, for one-pass guidance."""
        audio_length = condition.audio_kv[0][0].shape[2]
        guide_length = condition.guide_kv[0][0].shape[2] if condition.guide_kv is not None else None
        null = self.null_condition(condition.batch_size, audio_length, guide_length)
        return Condition.cat([condition, null.map(lambda x: x.to(condition.pooled.dtype))])

    def _positions(self, length: int, device: torch.device, start: int = 0) -> Tensor:
        """Integer positions start, ..., start + length - 1 (motion frames; the reference's every index)."""
        return torch.arange(start, start + length, device=device, dtype=torch.float32)

    def _audio_rotation(self, length: int, device: torch.device) -> AnyRotation:
        if self.reference_positions:
            return self.rotary(self._positions(length, device))
        return self.rotary(audio_positions(length, device))

    def _time_rotation(self, audio_length: int, device: torch.device) -> AnyRotation | None:
        """The reference rotates the time tokens as the memory's last positions; a2p leaves them at no time."""
        if self.reference_positions:
            return self.rotary(self._positions(self.config.time_tokens, device, start=audio_length))
        return None

    def _audio_kv(self, tokens: Tensor, rotation: AnyRotation) -> tuple[KeyValue, ...]:
        memory = self.memory_norm(tokens)
        return tuple(layer.cross_attention[0].key_value(memory, rotation) for layer in self.layers)

    def _guide_kv(self, keyframes: Tensor) -> tuple[KeyValue, ...]:
        length, device = keyframes.shape[1], keyframes.device
        if self.reference_positions:
            rotation = self.rotary(self._positions(length, device))
        else:
            rotation = self.rotary(guide_positions(length, device))
        return tuple(layer.cross_attention[1].key_value(keyframes, rotation) for layer in self.layers)

    def forward(self, x_t: Tensor, t: Tensor, condition: Condition | ConditionInputs) -> Tensor:
        """Predict x0 (B, T, D_motion) from noisy motion x_t (B, T, D_motion) at steps t (B,) long."""
        if isinstance(condition, ConditionInputs):
            condition = self.encode_condition(*condition)
        batch, length, _ = x_t.shape
        if condition.batch_size != batch:
            raise ValueError(f"condition has {condition.batch_size} rows, x_t has {batch}")

        time_hidden = self.time_embedding(t)  # (B, 4W)
        film = self.time_to_film(time_hidden) + condition.pooled  # (B, W)
        time_tokens = self.memory_norm(
            self.time_to_tokens(time_hidden).view(batch, self.config.time_tokens, -1)
        )
        rotation = self.rotary(self._positions(length, x_t.device))
        time_rotation = self._time_rotation(condition.audio_kv[0][0].shape[2], x_t.device)

        h = self.motion_in(x_t)  # (B, T, W)
        guide_kv = condition.guide_kv or (None,) * len(self.layers)
        for layer, (audio_k, audio_v), guide in zip(self.layers, condition.audio_kv, guide_kv):
            # (B, H, time_tokens, W / H)
            time_k, time_v = layer.cross_attention[0].key_value(time_tokens, time_rotation)
            keys = torch.cat((audio_k, time_k.to(audio_k.dtype)), dim=2)
            values = torch.cat((audio_v, time_v.to(audio_v.dtype)), dim=2)
            memories = [(keys, values)]
            if guide is not None:
                memories.append(guide)
            h = layer(h, memories, film, rotation)
        x0 = self.motion_out(h)  # (B, T, D_motion)

        if self.conv_head is not None:
            x0 = self.conv_out(self.conv_head(x0.transpose(1, 2))).transpose(1, 2)
        return x0


def _null_tokens(null: Tensor, length: int, what: str) -> Tensor:
    """Null tokens (1, length, W): one shared token repeated, or the first `length` positional ones."""
    if null.shape[1] == 1:
        return null.expand(1, length, -1)
    if length > null.shape[1]:
        raise ValueError(
            f"{length} {what} exceed the model's {null.shape[1]} positional null tokens "
            "(sample long clips in windows of at most that length)"
        )
    return null[:, :length]


def build_denoiser(config: DenoiserConfig) -> Denoiser:
    """The denoiser described by `config`, on the current default device, in float32."""
    return Denoiser(dataclasses.replace(config))
