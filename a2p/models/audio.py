"""Frozen audio featurizers: stereo 48 kHz audio (B, S, 2) in [-1, 1] -> features (B, S // 480, D) at 100 Hz.

Feature frame i describes the audio block [480 i, 480 (i + 1)) of both channels (channel 0's
features, then channel 1's). Featurizers are frozen, deterministic and run on a CPU, so the data
tools can compute them once into the shards (`build_featurizer(name)`, then `featurize_long` over
a long clip).

Edges. A feature frame also looks at a little audio on either side of its block
(`context_frames`). A window cut from a long clip is zero-padded where the clip would have had
audio, so only its first and last `context_frames` frames differ from the whole clip's;
`featurize_long` hides the seams by featurizing overlapping chunks and keeping their interiors,
and equals featurizing the whole clip at once.

Registry. `register_featurizer(name)` adds a builder `(weights path or None) -> Featurizer`; the
reference's frozen vq-wav2vec encoder (fairseq) can join as one more entry with a key converter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torchaudio.models.wav2vec2.components import _get_feature_extractor

from a2p.config.audio import FEATURE_DIMS, MEL_BINS, REFERENCE_FEATURE_DIMS, WAV2VEC2_CHANNEL_DIM
from a2p.constants import AUDIO_CHANNELS, SAMPLE_RATE, SAMPLES_PER_FEATURE
from a2p.errors import ConfigError
from a2p.fileio import file_sha256

logger = logging.getLogger(__name__)


class Featurizer(nn.Module):
    """A frozen map from stereo audio (B, S, 2) at 48 kHz to features (B, S // 480, dim) at 100 Hz.

    Subclasses implement `featurize` and set `name`, `version` (bumped whenever the output for
    the same input would change), `dim` and `context_frames` (feature frames on each side whose
    audio a frame also reads; None when a frame depends on the whole input). Chunks handed to
    `featurize_long` start at multiples of `frame_multiple` frames.
    """

    name: str = ""
    version: str = ""
    dim: int = 0
    context_frames: int | None = 0
    frame_multiple: int = 1
    weights_digest: str | None = None
    """sha256 of the weights file a pretrained featurizer was loaded from."""

    def freeze(self) -> Featurizer:
        """No gradients, evaluation mode; every featurizer calls this at the end of its constructor."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Featurizer:
        """Featurizers stay in evaluation mode whatever a parent module asks."""
        return super().train(False)

    @property
    def fingerprint(self) -> str:
        """`name:version`, plus the weights digest for pretrained featurizers (for shard manifests)."""
        base = f"{self.name}:{self.version}"
        return f"{base}:{self.weights_digest}" if self.weights_digest else base

    def forward(self, audio: Tensor) -> Tensor:
        """audio (B, S, 2) float in [-1, 1] -> (B, S // 480, dim) float32 features."""
        if audio.ndim != 3 or audio.shape[-1] != AUDIO_CHANNELS:
            raise ValueError(
                f"expected stereo audio (B, S, {AUDIO_CHANNELS}), got shape {tuple(audio.shape)}"
            )
        if audio.shape[1] < SAMPLES_PER_FEATURE:
            raise ValueError(f"need at least {SAMPLES_PER_FEATURE} samples, got {audio.shape[1]}")
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            return self.featurize(audio.float())

    def featurize(self, audio: Tensor) -> Tensor:
        """The features of float32 audio (B, S, 2), S >= 480; called without gradients or autocast."""
        raise NotImplementedError

    @staticmethod
    def _channels_to_batch(audio: Tensor) -> Tensor:
        """(B, S, C) -> (B * C, S): every channel is featurized alone."""
        return audio.transpose(1, 2).reshape(-1, audio.shape[1])

    @staticmethod
    def _batch_to_channels(features: Tensor, batch: int) -> Tensor:
        """(B * C, T, D) -> (B, T, C * D): channel 0's features, then channel 1's."""
        _, length, dim = features.shape
        return features.view(batch, AUDIO_CHANNELS, length, dim).transpose(1, 2).reshape(batch, length, -1)


class MelFeaturizer(Featurizer):
    """Log-mel spectrogram per channel: 80 slaney mel bands up to 12 kHz, 25 ms Hann window, 10 ms hop.

    Frame i's window is centred on the middle of its block (sample 480 i + 240); the clip is
    zero-padded so that every block has a frame, hence S // 480 frames. Needs no weights.
    """

    name = "mel"
    version = "1"
    dim = FEATURE_DIMS["mel"]
    context_frames = 1  # the 1200-sample window reaches 360 samples past each side of a block

    n_fft = 2048
    win_length = 1200
    f_max = 12_000.0
    log_floor = 1e-10

    def __init__(self) -> None:
        super().__init__()
        window = torch.hann_window(self.win_length)
        # Normalize so a full-scale sine has power ~1/4 whatever the window length.
        self.register_buffer("window", window / window.sum(), persistent=False)
        filters = torchaudio.functional.melscale_fbanks(
            n_freqs=self.n_fft // 2 + 1,
            f_min=0.0,
            f_max=self.f_max,
            n_mels=MEL_BINS,
            sample_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_fft / 2 + 1, MEL_BINS)
        self.register_buffer("filters", filters, persistent=False)
        self.freeze()

    def featurize(self, audio: Tensor) -> Tensor:
        batch, samples, _ = audio.shape
        frames = samples // SAMPLES_PER_FEATURE
        # torch.stft centres the window in each n_fft frame; shift so it centres on the block.
        pad = self.n_fft // 2 - SAMPLES_PER_FEATURE // 2
        x = F.pad(self._channels_to_batch(audio), (pad, pad))  # (B * 2, S + 2 pad)
        spec = torch.stft(
            x,
            self.n_fft,
            hop_length=SAMPLES_PER_FEATURE,
            win_length=self.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )[..., :frames]  # (B * 2, n_fft / 2 + 1, T)
        mel = spec.abs().square().transpose(1, 2) @ self.filters  # (B * 2, T, MEL_BINS)
        return self._batch_to_channels(mel.clamp_min(self.log_floor).log(), batch)


WAV2VEC2_CONV_LAYERS = (
    [(WAV2VEC2_CHANNEL_DIM, 10, 5)] + [(WAV2VEC2_CHANNEL_DIM, 3, 2)] * 4 + [(WAV2VEC2_CHANNEL_DIM, 2, 2)] * 2
)
"""(channels, kernel, stride) of the wav2vec 2.0 convolutional feature extractor (Baevski et al., 2020)."""


class Wav2Vec2Featurizer(Featurizer):
    """The wav2vec 2.0 convolutional feature extractor (torchaudio's architecture) per channel.

    Audio is resampled 48 kHz -> 16 kHz; the conv stack (receptive field 400 samples, stride 320)
    gives 50 Hz frames of 512 channels. The signal is left-padded by 40 samples so each 50 Hz
    frame is centred on the boundary between two 100 Hz blocks; linear interpolation with
    half-sample centres (`F.interpolate(scale_factor=2, align_corners=False)`) then lands exactly
    on the centres of the 100 Hz blocks (0.25 / 0.75 blends of neighbouring 50 Hz frames).
    The waveform is not normalized per utterance (that would make features depend on the window).

    `norm_mode="layer_norm"` (wav2vec2 large, XLS-R, HuBERT large) normalizes every frame alone.
    `"group_norm"` (wav2vec2 base) normalizes the first layer over the whole input, so features
    then depend slightly on where a window starts and ends (`context_frames` is None).
    """

    name = "wav2vec2"
    version = "1"
    dim = FEATURE_DIMS["wav2vec2"]
    frame_multiple = 2  # chunks must start on the 50 Hz grid

    model_rate = 16_000
    stride = 320
    receptive_field = 400

    def __init__(
        self, norm_mode: Literal["layer_norm", "group_norm"] = "layer_norm", conv_bias: bool = True
    ) -> None:
        super().__init__()
        self.norm_mode = norm_mode
        self.extractor = _get_feature_extractor(norm_mode, WAV2VEC2_CONV_LAYERS, conv_bias)
        # Resampling reads ~19 samples around each output; the conv window spans 1200 samples at
        # 48 kHz; interpolation blends two 50 Hz frames: at most 1100 samples (< 3 blocks) per side.
        self.context_frames = 3 if norm_mode == "layer_norm" else None
        self.freeze()

    @classmethod
    def from_file(cls, path: str | Path) -> Wav2Vec2Featurizer:
        """Load the conv extractor from a state dict (`.pt`) or `.safetensors` file.

        Keys may carry any prefix before `conv_layers.` (torchaudio and Hugging Face wav2vec2
        models name them alike); the norm mode and conv bias are read from which keys exist.
        """
        path = Path(path)
        state = _conv_layer_weights(_read_state_dict(path), path)
        if "conv_layers.1.layer_norm.weight" in state:
            norm_mode: Literal["layer_norm", "group_norm"] = "layer_norm"
        elif "conv_layers.0.layer_norm.weight" in state:
            norm_mode = "group_norm"
        else:
            raise ConfigError(f"{path}: no normalization weights ('conv_layers.N.layer_norm.weight') found")
        featurizer = cls(norm_mode, conv_bias="conv_layers.0.conv.bias" in state)
        try:
            featurizer.extractor.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"{path}: not a wav2vec2 conv feature extractor ({err})") from err
        featurizer.weights_digest = file_sha256(path)
        logger.info("loaded wav2vec2 feature extractor (%s) from %s", norm_mode, path)
        return featurizer

    def featurize(self, audio: Tensor) -> Tensor:
        batch, samples, _ = audio.shape
        frames = samples // SAMPLES_PER_FEATURE
        x = torchaudio.functional.resample(self._channels_to_batch(audio), SAMPLE_RATE, self.model_rate)
        left = (self.receptive_field - self.stride) // 2
        coarse = frames // 2 + 1  # 50 Hz frames needed so no output is clamped at the edge
        needed = (coarse - 1) * self.stride + self.receptive_field
        x = F.pad(x, (left, max(0, needed - left - x.shape[-1])))[:, :needed]  # (B * 2, needed)
        z, _ = self.extractor(x, None)  # (B * 2, coarse, 512)
        z = F.interpolate(z.transpose(1, 2), scale_factor=2, mode="linear", align_corners=False)
        return self._batch_to_channels(z[..., :frames].transpose(1, 2), batch)  # (B, T, 1024)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"{path}: featurizer weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader has its own error types; the user needs the file name
        raise ConfigError(f"{path}: cannot read featurizer weights ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _conv_layer_weights(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Keep the conv feature extractor's tensors, renamed to start at `conv_layers.`."""
    marker = "conv_layers."
    out = {key[key.index(marker) :]: value for key, value in state.items() if marker in key}
    if not out:
        raise ConfigError(f"{path}: no wav2vec2 feature-extractor weights (keys containing '{marker}')")
    return out


FeaturizerBuilder = Callable[[str | None], Featurizer]
_REGISTRY: dict[str, FeaturizerBuilder] = {}


def register_featurizer(name: str) -> Callable[[FeaturizerBuilder], FeaturizerBuilder]:
    """Decorator adding a builder `(weights path or None) -> Featurizer` under `name`."""

    def add(builder: FeaturizerBuilder) -> FeaturizerBuilder:
        if name in _REGISTRY:
            raise ValueError(f"featurizer {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return add


def featurizer_names() -> list[str]:
    """Names `build_featurizer` accepts."""
    return sorted(_REGISTRY)


@register_featurizer("mel")
def _build_mel(weights: str | None) -> Featurizer:
    if weights is not None:
        raise ConfigError(f"featurizer 'mel' needs no weights, got {weights!r}")
    return MelFeaturizer()


@register_featurizer("wav2vec2")
def _build_wav2vec2(weights: str | None) -> Featurizer:
    if weights is None:
        raise ConfigError(
            "featurizer 'wav2vec2' needs a local weights file (a .pt state dict or .safetensors "
            "holding its 'conv_layers.*' tensors): set audio.weights"
        )
    return Wav2Vec2Featurizer.from_file(weights)


def build_featurizer(name: str, weights: str | None = None) -> Featurizer:
    """The frozen featurizer `name`, loading pretrained weights from the local file `weights`."""
    if name in REFERENCE_FEATURE_DIMS:
        raise ConfigError(
            f"{name!r} features cannot be computed once and cut into crops: every layer of vq-wav2vec's "
            "extractor normalizes over the whole input (GroupNorm(1, 512)), so a crop's features depend "
            "on all of the crop and its padding (a slice of a 40 s window's features is up to 0.35 std "
            "away from the crop's own). The paper presets run it on each crop as the reference does: "
            "`a2p train ... --audio-weights FILE`"
        )
    if name not in _REGISTRY:
        raise ConfigError(f"unknown featurizer {name!r} (choose from {featurizer_names()})")
    return _REGISTRY[name](weights)


def featurize_long(featurizer: Featurizer, audio: Tensor, chunk_frames: int = 3000) -> Tensor:
    """Features (B, S // 480, dim) of a long clip (B, S, 2), computed in overlapping chunks.

    Each chunk of `chunk_frames` frames (30 s by default) is featurized with `context_frames`
    extra frames of real audio on each side, which are then dropped, so the result equals
    featurizing the whole clip at once (up to float rounding) in bounded memory.
    """
    total = audio.shape[1] // SAMPLES_PER_FEATURE
    step = featurizer.frame_multiple
    chunk = max(step, -(-chunk_frames // step) * step)
    if featurizer.context_frames is None:
        logger.warning(
            "featurizer %s normalizes over its whole input: chunked features differ slightly", featurizer.name
        )
    margin = -(-(featurizer.context_frames or 0) // step) * step
    if total <= chunk:
        return featurizer(audio)
    pieces = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        lo, hi = max(start - margin, 0), min(stop + margin, total)
        # The last chunk keeps the clip's trailing samples, which the whole clip's last frame reads.
        end = audio.shape[1] if hi == total else hi * SAMPLES_PER_FEATURE
        features = featurizer(audio[:, lo * SAMPLES_PER_FEATURE : end])
        pieces.append(features[:, start - lo : stop - lo])
    return torch.cat(pieces, dim=1)
