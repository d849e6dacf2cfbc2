"""The reference's frozen lip regressor and the face model's 2038-dim audio condition.

audio2photoreal's face denoiser conditions on vq-wav2vec features (1024 dims,
`a2p.models.wav2vec1.VQWav2VecFeatures`) concatenated with lip geometry that a pretrained regressor
predicts from channel 0 (338 vertices x 3 = 1014 dims), 2038 in all. The regressor
(`Audio2LipRegressionTransformer` there):

1. audio of T motion frames (B, T, 1600) at 48 kHz -> 16 kHz, 320 zero samples (20 ms) in front,
   wav2vec large's extractor and aggregator -> a (B, F', 512) memory at 100 Hz;
2. a transformer of width 512, 4 heads, ReLU feed-forward 1024, pre-norm: 2 encoder layers over
   the memory, 4 decoder layers (self-attention, cross-attention to the memory, feed-forward);
   both sequences get sinusoidal positions, and the decoder's queries are zeros plus positions;
3. a linear map to 338 x 3 vertices per motion frame.

`lip_condition` runs it as the reference's `encode_lip` does: 4 s (120-frame) chunks, vertices
flattened vertex-major, then nearest-exact resampling onto the feature frames. Dropout is never
applied: the regressor is frozen and stays in evaluation mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from a2p.constants import AUDIO_CHANNELS, FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.errors import DataError
from a2p.models.keymap import KeyMap, rename
from a2p.models.torch_files import load_torch_file
from a2p.models.wav2vec1 import (
    VQ_WAV2VEC_FEATURE_LAYERS,
    WAV2VEC_LARGE,
    WAV2VEC_SAMPLE_RATE,
    VQWav2VecFeatures,
    Wav2Vec1,
    Wav2Vec1Architecture,
    build_wav2vec1,
)
from a2p.models.wav2vec1_files import (
    WAV2VEC_TENSOR,
    check_resample_kernel,
    load_strict,
    stored_feature_layers,
)

logger = logging.getLogger(__name__)

LIP_VERTICES = 338
"""Lip vertices the regressor predicts per motion frame (x, y, z each)."""

LIP_DIM = LIP_VERTICES * 3
"""Width of the lip part of the face condition (1014)."""

LIP_CHUNK_FRAMES = 4 * FPS
"""Motion frames the regressor sees at once (4 s)."""

LIP_AUDIO_PAD = WAV2VEC_SAMPLE_RATE // 50
"""Zero samples (20 ms at 16 kHz, 320) put before each chunk's resampled audio."""

LIP_WIDTH = 512
LIP_HEADS = 4
LIP_FF_DIM = 1024
LIP_ENCODER_LAYERS = 2
LIP_DECODER_LAYERS = 4
LIP_MAX_POSITIONS = 1024
"""Rows of the sinusoidal position tables (memory frames of one chunk: 400 for 120 motion frames)."""


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """Positions (length, dim): sin at even channels, cos at odd, frequencies 10000^(-2i/dim).

    Computed in float32 like the reference's table; its checkpoints store the float32 table and
    a float64 run uses that (cast) table, so a2p loads it rather than recomputing in float64.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class PositionTable(nn.Module):
    """Adds the stored sinusoidal table `pe` (max_len, dim) to a sequence (B, T, dim)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[None, : x.shape[1]]


def _feed_forward(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class LipEncoderLayer(nn.Module):
    """Pre-norm self-attention and ReLU feed-forward over the audio memory (B, F', W)."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = _feed_forward(dim, ff_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_attn(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class LipDecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the memory and ReLU feed-forward (B, T, W)."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = _feed_forward(dim, ff_dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.cross_attn(self.norm_cross(x), memory, memory, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class LipAudioEncoder(nn.Module):
    """Motion-frame audio (B, T, 1600) at 48 kHz -> wav2vec large context features (B, F', 512)."""

    def __init__(self, wav2vec: Wav2Vec1) -> None:
        super().__init__()
        if wav2vec.feature_aggregator is None:
            raise ValueError("the lip regressor's wav2vec needs its aggregator")
        self.resampler = torchaudio.transforms.Resample(SAMPLE_RATE, WAV2VEC_SAMPLE_RATE)
        self.wav2vec = wav2vec

    def forward(self, audio: Tensor) -> Tensor:
        batch, frames, _ = audio.shape
        x = self.resampler(audio.reshape(batch, frames * SAMPLES_PER_FRAME))  # (B, S16)
        x = F.pad(x, (LIP_AUDIO_PAD, 0))
        return self.wav2vec(x).transpose(1, 2)  # (B, F', 512)


class LipRegressor(nn.Module):
    """The reference's frozen audio -> lip vertices regressor: (B, T, 1600) -> (B, T, 338, 3)."""

    def __init__(
        self,
        wav2vec: Wav2Vec1,
        width: int = LIP_WIDTH,
        heads: int = LIP_HEADS,
        ff_dim: int = LIP_FF_DIM,
        encoder_layers: int = LIP_ENCODER_LAYERS,
        decoder_layers: int = LIP_DECODER_LAYERS,
        vertices: int = LIP_VERTICES,
        max_positions: int = LIP_MAX_POSITIONS,
    ) -> None:
        super().__init__()
        self.audio_encoder = LipAudioEncoder(wav2vec)
        self.memory_positions = PositionTable(max_positions, width)
        self.query_positions = PositionTable(max_positions, width)
        self.encoder = nn.ModuleList(LipEncoderLayer(width, heads, ff_dim) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(LipDecoderLayer(width, heads, ff_dim) for _ in range(decoder_layers))
        self.to_vertices = nn.Linear(width, vertices * 3)
        self.width = width
        self.vertices = vertices
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LipRegressor:
        """Frozen: stays in evaluation mode whatever a parent module asks."""
        return super().train(False)

    def forward(self, audio: Tensor) -> Tensor:
        """audio (B, T, 1600) of one chunk (T <= 1024 frames) -> vertices (B, T, 338, 3)."""
        batch, frames, _ = audio.shape
        with torch.no_grad():
            memory = self.memory_positions(self.audio_encoder(audio))  # (B, F', W)
            for layer in self.encoder:
                memory = layer(memory)
            pe = self.query_positions.pe
            x = self.query_positions(torch.zeros(batch, frames, self.width, dtype=pe.dtype, device=pe.device))
            for layer in self.decoder:
                x = layer(x, memory)
            return self.to_vertices(x).view(batch, frames, self.vertices, 3)


def lip_condition(regressor: LipRegressor, audio: Tensor, feature_frames: int) -> Tensor:
    """The lip part of the face condition: normalized stereo audio (B, T * 1600, 2) -> (B, F, 1014).

    Channel 0 in 120-frame chunks (the last may be shorter); vertices (v, xyz) flattened as
    3 v + xyz; each of the F feature frames takes the nearest-exact motion frame.
    """
    batch = audio.shape[0]
    channel0 = audio.reshape(batch, -1, SAMPLES_PER_FRAME, AUDIO_CHANNELS)[..., 0]  # (B, T, 1600)
    frames = channel0.shape[1]
    chunks = [regressor(channel0[:, i : i + LIP_CHUNK_FRAMES]) for i in range(0, frames, LIP_CHUNK_FRAMES)]
    vertices = torch.cat(chunks, dim=1).reshape(batch, frames, -1)  # (B, T, 1014)
    resampled = F.interpolate(vertices.transpose(1, 2), size=feature_frames, mode="nearest-exact")
    return resampled.transpose(1, 2)  # (B, F, 1014)


def face_audio_condition(features: VQWav2VecFeatures, regressor: LipRegressor, audio: Tensor) -> Tensor:
    """The reference face model's audio condition: vq-wav2vec (1024) then lip vertices (1014) -> (B, F, 2038)."""
    vq = features(audio)  # (B, F, 1024)
    return torch.cat((vq, lip_condition(regressor, audio, vq.shape[1])), dim=-1)


# ---------------------------------------------------------------------------------------------
# Loading

_ENCODER = r"regression_model\.transformer_encoder\.(\d+)\."
_DECODER = r"regression_model\.transformer_decoder\.(\d+)\."
REFERENCE_LIP_KEYMAP = KeyMap(
    rules=(
        (r"audio_encoder\.resampler\.kernel", r"audio_encoder.resampler.kernel"),
        (rf"audio_encoder\.wav2vec_model\.({WAV2VEC_TENSOR})", r"audio_encoder.wav2vec.\1"),
        (r"regression_model\.cond_positional_encoding\.pe", r"memory_positions.pe"),
        (r"regression_model\.target_positional_encoding\.pe", r"query_positions.pe"),
        (_ENCODER + r"norm1\.(.*)", r"encoder.\1.norm_attn.\2"),
        (_ENCODER + r"self_attn\.self_attn\.(.*)", r"encoder.\1.attn.\2"),
        (_ENCODER + r"norm2\.(.*)", r"encoder.\1.norm_ff.\2"),
        (_ENCODER + r"feedforward\.ff\.0\.(.*)", r"encoder.\1.ff.0.\2"),
        (_ENCODER + r"feedforward\.ff\.3\.(.*)", r"encoder.\1.ff.2.\2"),
        (_DECODER + r"norm1\.(.*)", r"decoder.\1.norm_self.\2"),
        (_DECODER + r"self_attn\.self_attn\.(.*)", r"decoder.\1.self_attn.\2"),
        (_DECODER + r"norm2\.(.*)", r"decoder.\1.norm_cross.\2"),
        (_DECODER + r"cross_attn\.cross_attn\.(.*)", r"decoder.\1.cross_attn.\2"),
        (_DECODER + r"norm3\.(.*)", r"decoder.\1.norm_ff.\2"),
        (_DECODER + r"feedforward\.ff\.0\.(.*)", r"decoder.\1.ff.0.\2"),
        (_DECODER + r"feedforward\.ff\.3\.(.*)", r"decoder.\1.ff.2.\2"),
        (r"project_output\.(.*)", r"to_vertices.\1"),
    ),
    unused=(r"audio_encoder\.wav2vec_model\.(vector_quantizer|wav2vec_predictions)\..*",),
)
"""The reference's `Audio2LipRegressionTransformer` state dict onto `LipRegressor`."""

_WAV2VEC_PREFIX = "audio_encoder.wav2vec_model."


def lip_regressor_from_state(
    state: Mapping[str, Tensor], source: str, arch: Wav2Vec1Architecture = WAV2VEC_LARGE
) -> LipRegressor:
    """`LipRegressor` from the reference's regressor state dict (keys without the `lip_model.` prefix).

    wav2vec large's flags come from `arch` (no args are stored with the regressor); its number of
    extractor layers is read from the tensors. The stored resampler kernel and position tables
    are checked against what they must be, then loaded as stored (the reference runs with them).
    """
    layers = stored_feature_layers(state, _WAV2VEC_PREFIX, VQ_WAV2VEC_FEATURE_LAYERS, source)
    regressor = LipRegressor(build_wav2vec1(replace(arch, feature_layers=layers)))
    converted = rename(state, REFERENCE_LIP_KEYMAP, source)
    if "audio_encoder.resampler.kernel" in converted:
        check_resample_kernel(
            converted["audio_encoder.resampler.kernel"], f"{source} (audio_encoder.resampler.kernel)"
        )
    for name in ("memory_positions.pe", "query_positions.pe"):
        table = converted.get(name)
        if table is not None and table.ndim == 2:
            expected = sinusoidal_table(*table.shape)
            if float((table.double() - expected.double()).abs().max()) > 1e-5:
                raise DataError(f"{source}: the stored position table {name} is not the sinusoidal one")
    load_strict(regressor, converted, source)
    return regressor


def load_lip_regressor(path: str | Path) -> LipRegressor:
    """`LipRegressor` from the reference's `assets/iter-0200000.pt` (`{'model_state_dict'}`) or from
    the `lip_model.*` tensors of the released face checkpoint (a bare state dict)."""
    path = Path(path)
    stored = load_torch_file(path, what="the lip regressor (iter-0200000.pt) or the face checkpoint")
    if isinstance(stored.get("model_state_dict"), Mapping):
        state = stored["model_state_dict"]
    else:
        state = {k.removeprefix("lip_model."): v for k, v in stored.items() if k.startswith("lip_model.")}
        if not state:
            raise DataError(
                f"{path}: holds neither 'model_state_dict' (iter-0200000.pt) nor 'lip_model.*' tensors (face checkpoint)"
            )
    regressor = lip_regressor_from_state(state, str(path))
    logger.info("loaded the lip regressor from %s", path)
    return regressor
