"""wav2vec 1.0's convolutional networks in pure torch, and the reference's vq-wav2vec audio features.

wav2vec (Schneider et al., 2019) maps 16 kHz audio through a strided conv *feature extractor*
(z, 100 Hz, 512 channels) and a causal conv *aggregator* (c); vq-wav2vec (Baevski et al., 2020)
has the same extractor. The reference (audio2photoreal) keeps both frozen: its denoisers and guide
condition on vq-wav2vec's extractor output of each channel (`encode_audio`), and its lip regressor
runs wav2vec large's extractor and aggregator (`a2p.models.lip`).

The modules are named so that their state-dict keys are fairseq's
(`feature_extractor.conv_layers.{i}.0.weight`, `.2.weight/.bias` for the GroupNorm;
`feature_aggregator.conv_layers.{i}.1.weight/.bias`, `.3.weight/.bias`), and they compute what
fairseq's `ConvFeatureExtractionModel` and `ConvAggegator` compute in evaluation mode (dropout is
never applied: these networks are frozen). fairseq's GroupNorm runs in float32 whatever the input
dtype (it casts up from half and down from double); so does `Float32GroupNorm`, to give the
reference's numbers in float64 too.

This module builds untrained networks from explicit architectures and reads no files; their
weights are loaded by `a2p.models.wav2vec1_files`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from a2p.constants import AUDIO_CHANNELS, SAMPLE_RATE, SAMPLES_PER_FRAME

WAV2VEC_SAMPLE_RATE = 16_000
"""wav2vec 1.0 and vq-wav2vec read 16 kHz audio."""

ConvSpec = tuple[int, int, int]
"""(output channels, kernel size, stride) of one conv layer, as fairseq's `conv_*_layers` list them."""

VQ_WAV2VEC_FEATURE_LAYERS: tuple[ConvSpec, ...] = (
    (512, 10, 5),
    (512, 8, 4),
    (512, 4, 2),
    (512, 4, 2),
    (512, 4, 2),
    (512, 1, 1),
    (512, 1, 1),
    (512, 1, 1),
)
"""vq-wav2vec's extractor: five strided convs (stride 160 in all, 10 ms at 16 kHz) then three 1x1."""

WAV2VEC_LARGE_FEATURE_LAYERS: tuple[ConvSpec, ...] = VQ_WAV2VEC_FEATURE_LAYERS[:7]
"""wav2vec large's extractor: the same five strided convs and two 1x1 (the paper's "two additional
linear transformations"; fairseq's README training command)."""

WAV2VEC_AGGREGATOR_LAYERS: tuple[ConvSpec, ...] = tuple((512, kernel, 1) for kernel in range(2, 14))
"""The aggregator of wav2vec large and vq-wav2vec: twelve causal convs with kernels 2, 3, ..., 13."""

Activation = Literal["relu", "gelu"]


@dataclass(frozen=True)
class Wav2Vec1Architecture:
    """The architecture flags of a wav2vec 1.0 model (fairseq's `Wav2VecConfig` names in brackets)."""

    feature_layers: tuple[ConvSpec, ...]
    """Extractor convs [conv_feature_layers]."""
    aggregator_layers: tuple[ConvSpec, ...]
    """Aggregator convs [conv_aggregator_layers]; () builds no aggregator."""
    activation: Activation
    """Activation after every normalization [activation]."""
    log_compression: bool
    """The extractor ends with log(|z| + 1) [log_compression]."""
    feature_skip_connections: bool = False
    """Scaled residuals around extractor convs that keep the width [skip_connections_feat]."""
    aggregator_skip_connections: bool = True
    """Scaled residuals around every aggregator conv [skip_connections_agg]."""
    residual_scale: float = 0.5
    """Residual sums are multiplied by sqrt(residual_scale) [residual_scale]."""
    affine_group_norm: bool = True
    """GroupNorms learn a scale and shift [not non_affine_group_norm]."""
    aggregator_conv_bias: bool = True
    """Aggregator convs have biases [not no_conv_bias]."""
    aggregator_zero_pad: bool = False
    """Aggregator convs are left-padded with zeros rather than by repeating the first frame [agg_zero_pad]."""


VQ_WAV2VEC = Wav2Vec1Architecture(
    feature_layers=VQ_WAV2VEC_FEATURE_LAYERS,
    aggregator_layers=WAV2VEC_AGGREGATOR_LAYERS,
    activation="gelu",
    log_compression=False,
)
"""fairseq's released vq-wav2vec (Gumbel), trained with README's command: `--activation gelu
--skip-connections-agg --residual-scale 0.5` and no `--log-compression` (a store_true flag then)."""

WAV2VEC_LARGE = Wav2Vec1Architecture(
    feature_layers=WAV2VEC_LARGE_FEATURE_LAYERS,
    aggregator_layers=WAV2VEC_AGGREGATOR_LAYERS,
    activation="relu",
    log_compression=True,
)
"""fairseq's released wav2vec large: `--skip-connections-agg --residual-scale 0.5 --log-compression`;
its args predate the activation option, for which fairseq fills in relu."""


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input's dtype (fairseq's `Fp32GroupNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class CausalPad(nn.Module):
    """Left-pad the time axis (B, C, T) by `width` frames, with zeros or copies of the first frame."""

    def __init__(self, width: int, zeros: bool) -> None:
        super().__init__()
        self.width = width
        self.mode = "constant" if zeros else "replicate"

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (self.width, 0), mode=self.mode)


def _activation(name: Activation) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown wav2vec activation {name!r} (relu or gelu)")


def conv_output_length(length: int, layers: Sequence[ConvSpec]) -> int:
    """Frames out of unpadded strided convs `layers` for `length` input samples (0 if too short)."""
    for _, kernel, stride in layers:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def resampled_length(samples: int) -> int:
    """Samples torchaudio's 48 kHz -> 16 kHz resampler returns for `samples` input samples."""
    return math.ceil(samples * WAV2VEC_SAMPLE_RATE / SAMPLE_RATE)


class ConvFeatureExtractor(nn.Module):
    """wav2vec's extractor: waveform (B, S) at 16 kHz -> z (B, C, F).

    Each layer is conv (no bias) -> [dropout slot] -> float32 GroupNorm(1, C) -> activation, held
    as `conv_layers.{i}.{0,1,2,3}` like fairseq's, so keys are `conv_layers.{i}.0.weight` and
    `conv_layers.{i}.2.{weight,bias}`.
    """

    def __init__(
        self,
        layers: Sequence[ConvSpec],
        activation: Activation,
        log_compression: bool,
        skip_connections: bool = False,
        residual_scale: float = 0.5,
        affine_norm: bool = True,
    ) -> None:
        super().__init__()
        self.layers = tuple(tuple(spec) for spec in layers)
        self.conv_layers = nn.ModuleList()
        in_channels = 1
        for channels, kernel, stride in self.layers:
            self.conv_layers.append(
                nn.Sequential(
                    nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=False),
                    nn.Identity(),  # fairseq's dropout (p = 0) sits here, so the norm is at index 2
                    Float32GroupNorm(1, channels, affine=affine_norm),
                    _activation(activation),
                )
            )
            in_channels = channels
        self.out_channels = in_channels
        self.log_compression = log_compression
        self.skip_connections = skip_connections
        self.residual_factor = math.sqrt(residual_scale)

    def output_frames(self, samples: int) -> int:
        """Feature frames for `samples` samples at 16 kHz."""
        return conv_output_length(samples, self.layers)

    def forward(self, waveform: Tensor) -> Tensor:
        """waveform (B, S) at 16 kHz -> (B, C, F)."""
        x = waveform.unsqueeze(1)  # (B, 1, S)
        for layer in self.conv_layers:
            residual = x
            x = layer(x)
            if self.skip_connections and x.shape[1] == residual.shape[1]:
                # fairseq's residual of a strided layer: every (T_in // T_out)-th input frame
                residual = residual[..., :: residual.shape[2] // x.shape[2]][..., : x.shape[2]]
                x = (x + residual) * self.residual_factor
        if self.log_compression:
            x = (x.abs() + 1).log()  # not log1p: the reference's rounding
        return x


class ConvAggregator(nn.Module):
    """wav2vec's context network: z (B, C, F) -> c (B, C', F), causal convs of stride 1.

    Each layer is causal left pad (kernel - 1) -> conv -> [dropout slot] -> float32 GroupNorm ->
    activation as `conv_layers.{i}.{0..4}` (keys `.1.weight/.bias`, `.3.weight/.bias`), with a
    residual scaled by sqrt(residual_scale), through a 1x1 `residual_proj.{i}` where the width
    changes.
    """

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[ConvSpec],
        activation: Activation,
        skip_connections: bool = True,
        residual_scale: float = 0.5,
        affine_norm: bool = True,
        conv_bias: bool = True,
        zero_pad: bool = False,
    ) -> None:
        super().__init__()
        self.layers = tuple(tuple(spec) for spec in layers)
        blocks = []
        self.residual_proj = nn.ModuleList()
        for channels, kernel, stride in self.layers:
            needs_projection = skip_connections and in_channels != channels
            self.residual_proj.append(
                nn.Conv1d(in_channels, channels, 1, bias=False) if needs_projection else None
            )
            blocks.append(
                nn.Sequential(
                    CausalPad(kernel - 1, zeros=zero_pad),
                    nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=conv_bias),
                    nn.Identity(),  # dropout slot, as in fairseq
                    Float32GroupNorm(1, channels, affine=affine_norm),
                    _activation(activation),
                )
            )
            in_channels = channels
        self.conv_layers = nn.Sequential(*blocks)
        self.out_channels = in_channels
        self.skip_connections = skip_connections
        self.residual_factor = math.sqrt(residual_scale)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, C, F) -> (B, C', F)."""
        x = z
        for projection, layer in zip(self.residual_proj, self.conv_layers):
            residual = x
            x = layer(x)
            if self.skip_connections:
                if projection is not None:
                    residual = projection(residual)
                x = (x + residual) * self.residual_factor
        return x


class Wav2Vec1(nn.Module):
    """A frozen wav2vec 1.0 model: `feature_extractor` and, where used, `feature_aggregator`."""

    def __init__(
        self, feature_extractor: ConvFeatureExtractor, feature_aggregator: ConvAggregator | None
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.feature_aggregator = feature_aggregator
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Wav2Vec1:
        """Frozen: stays in evaluation mode whatever a parent module asks."""
        return super().train(False)

    def forward(self, waveform: Tensor) -> Tensor:
        """waveform (B, S) at 16 kHz -> c (B, C', F), or z (B, C, F) without an aggregator."""
        z = self.feature_extractor(waveform)
        return z if self.feature_aggregator is None else self.feature_aggregator(z)


def build_wav2vec1(arch: Wav2Vec1Architecture) -> Wav2Vec1:
    """An (untrained) wav2vec 1.0 model of architecture `arch`."""
    extractor = ConvFeatureExtractor(
        arch.feature_layers,
        arch.activation,
        arch.log_compression,
        skip_connections=arch.feature_skip_connections,
        residual_scale=arch.residual_scale,
        affine_norm=arch.affine_group_norm,
    )
    aggregator = None
    if arch.aggregator_layers:
        aggregator = ConvAggregator(
            extractor.out_channels,
            arch.aggregator_layers,
            arch.activation,
            skip_connections=arch.aggregator_skip_connections,
            residual_scale=arch.residual_scale,
            affine_norm=arch.affine_group_norm,
            conv_bias=arch.aggregator_conv_bias,
            zero_pad=arch.aggregator_zero_pad,
        )
    return Wav2Vec1(extractor, aggregator)


# ---------------------------------------------------------------------------------------------
# The reference's audio features (FiLMTransformer.encode_audio)


def resample_kernel() -> Tensor:
    """torchaudio's 48 kHz -> 16 kHz sinc (Hann) kernel (1, 1, 41), float32, as `T.Resample` builds it."""
    return torchaudio.transforms.Resample(SAMPLE_RATE, WAV2VEC_SAMPLE_RATE).kernel


class VQWav2VecFeatures(nn.Module):
    """The reference's audio condition: vq-wav2vec's extractor on each channel, (B, S, 2) -> (B, F, 2 C).

    Each channel (of the waveform normalized with `a2p.data.person_stats.PersonStats.normalize_audio`) is resampled 48 kHz ->
    16 kHz with torchaudio's kernel (`resampler.kernel`, stored in the released checkpoints) and
    run through the extractor alone; features are channel 0's C then channel 1's C (1024 in all).
    No padding and no re-gridding: 600 motion frames give 1998 feature frames
    (`output_frames`). Frozen; works in the module's dtype (float64 reproduces the reference
    run in float64).
    """

    def __init__(self, feature_extractor: ConvFeatureExtractor) -> None:
        super().__init__()
        self.resampler = torchaudio.transforms.Resample(SAMPLE_RATE, WAV2VEC_SAMPLE_RATE)
        self.feature_extractor = feature_extractor
        self.dim = AUDIO_CHANNELS * feature_extractor.out_channels
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VQWav2VecFeatures:
        """Frozen: stays in evaluation mode whatever a parent module asks."""
        return super().train(False)

    def output_frames(self, samples: int) -> int:
        """Feature frames for `samples` samples at 48 kHz."""
        return self.feature_extractor.output_frames(resampled_length(samples))

    def forward(self, audio: Tensor) -> Tensor:
        """Normalized stereo audio (B, S, 2) at 48 kHz -> features (B, F, 2 C)."""
        if audio.ndim != 3 or audio.shape[-1] != AUDIO_CHANNELS:
            raise ValueError(f"expected audio (B, S, {AUDIO_CHANNELS}), got shape {tuple(audio.shape)}")
        with torch.no_grad():
            # one channel at a time, as the reference does (the same batch shapes, the same rounding)
            per_channel = [
                self.feature_extractor(self.resampler(audio[:, :, c])) for c in range(AUDIO_CHANNELS)
            ]
        return torch.cat(per_channel, dim=1).transpose(1, 2)  # (B, F, 2 C)


def vq_wav2vec_frames(motion_frames: int) -> int:
    """Feature frames the reference's vq-wav2vec condition has for `motion_frames` frames (600 -> 1998)."""
    return conv_output_length(resampled_length(motion_frames * SAMPLES_PER_FRAME), VQ_WAV2VEC_FEATURE_LAYERS)
