"""Crops of a window and the batch they make: drawing, cutting, padding, masking, normalizing.

A training crop (DESIGN.md, after the reference) has a length uniform in [400, 600) frames and a
uniform start, and is padded to 600 frames. A window shorter than the drawn length is cropped whole. When
the shards carry 100 Hz features, starts lie on a grid of 3 frames (4800 samples = 10 feature
frames), the smallest step at which motion frames and feature frames begin together, so features
are cut at exactly the crop's audio.

Batch keys (B samples, L = `crop_frames` = 600, K = L / 30 = 20, S = 1600 * L, F = L * 10 / 3 = 2000):

| key              | shape        | dtype   | content                                                  |
|------------------|--------------|---------|----------------------------------------------------------|
| `key`            | list of B    | str     | sample key `{scene}_{window start:06d}`; "" if empty     |
| `start`          | (B,)         | int64   | first frame of the crop within its window                |
| `length`         | (B,)         | int64   | frames of the crop before padding                        |
| `body`           | (B, L, 104)  | float32 | normalized poses, 0 in padding                           |
| `face`           | (B, L, 256)  | float32 | normalized face codes, 0 in padding and missing frames   |
| `mask`           | (B, L)       | bool    | frame < length                                           |
| `face_mask`      | (B, L)       | bool    | mask and the face code is present                        |
| `keyframes`      | (B, K, 104)  | float32 | `body` at crop frames 0, 30, 60, ...                     |
| `keyframe_mask`  | (B, K)       | bool    | `mask` at those frames                                   |
| `audio`          | (B, S, 2)    | float32 | the crop's audio, 0 in padding (unless `audio=False`)    |
| `features`       | (B, F, D)    | float32 | the crop's 100 Hz features, 0 in padding (when present)  |
| `features_mask`  | (B, F)       | bool    | feature frame holds a value                              |

Empty rows (evaluation padding) are all zeros with every mask False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from a2p.constants import (
    CROP_MAX_FRAMES,
    CROP_MIN_FRAMES,
    FACE_DIM,
    FEATURE_RATE_HZ,
    KEYFRAME_INTERVAL,
    POSE_DIM,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
)
from a2p.data.decode import NormStats, RawSample, check_split, load_array, load_audio
from a2p.data.format import BODY_KEY, FACE_KEY, FACE_VALID_KEY, FEATURES_KEY, features_frames
from a2p.errors import DataError

Batch = dict[str, Any]
"""A batch: the keys in the table above."""


@dataclass(frozen=True)
class CropSpec:
    """How crops are cut and what they carry."""

    crop_frames: int = CROP_MAX_FRAMES
    """Padded length of every crop (frames); also the exclusive upper bound of random lengths."""
    min_frames: int = CROP_MIN_FRAMES
    """Shortest random training crop (frames)."""
    keyframe_interval: int = KEYFRAME_INTERVAL
    """One keyframe every this many frames, starting at crop frame 0."""
    audio: bool = True
    """Decode and return the crop's waveform (`audio`)."""
    features: bool = True
    """Return precomputed features (`features`) when the shards carry them."""
    feature_rate_hz: int | None = None
    """Rate of the shards' features (None: the shards carry none)."""

    def __post_init__(self) -> None:
        if not 0 < self.min_frames <= self.crop_frames:
            raise ValueError(f"need 0 < min_frames <= crop_frames, got {self.min_frames}, {self.crop_frames}")
        if self.crop_frames % self.keyframe_interval:
            raise ValueError(f"crop_frames {self.crop_frames} is not a multiple of {self.keyframe_interval}")
        if self.with_features and self.crop_frames % self.start_grid:
            raise ValueError(
                f"crop_frames {self.crop_frames} is not a multiple of the feature grid {self.start_grid}"
            )

    @property
    def with_features(self) -> bool:
        return self.features and self.feature_rate_hz is not None

    @property
    def start_grid(self) -> int:
        """Crop starts are multiples of this many frames (3 with 100 Hz features, else 1)."""
        if not self.with_features:
            return 1
        samples_per_feature = SAMPLE_RATE // int(self.feature_rate_hz or FEATURE_RATE_HZ)
        return math.lcm(SAMPLES_PER_FRAME, samples_per_feature) // SAMPLES_PER_FRAME

    @property
    def keyframes(self) -> int:
        return self.crop_frames // self.keyframe_interval

    @property
    def feature_frames(self) -> int:
        return features_frames(self.crop_frames, int(self.feature_rate_hz or FEATURE_RATE_HZ))


def draw_crop(rng: np.random.Generator, frames: int, spec: CropSpec) -> tuple[int, int]:
    """(start, length) of a random training crop of a window of `frames` frames.

    Always makes the same two draws, so the random stream does not depend on window lengths.
    """
    length = (
        int(rng.integers(spec.min_frames, spec.crop_frames))
        if spec.min_frames < spec.crop_frames
        else spec.crop_frames
    )
    slot = rng.random()
    length = min(length, frames)
    grid = spec.start_grid
    starts = (frames - length) // grid + 1  # starts 0, grid, 2 grid, ... with start + length <= frames
    return int(slot * starts) * grid, length


def eval_crops(frames: int, spec: CropSpec) -> list[tuple[int, int]]:
    """(start, length) of consecutive `crop_frames` chunks that cover a window of `frames` frames."""
    return [(start, min(spec.crop_frames, frames - start)) for start in range(0, frames, spec.crop_frames)]


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """A zero tensor; in shared memory when `shared` (fresh shared memory is zero-filled, and a
    DataLoader worker then hands it to the main process without copying it)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what PyTorch's own collate uses
    if not shared or new_shared is None:
        return torch.zeros(shape, dtype=dtype)
    storage = new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def allocate(spec: CropSpec, size: int, feature_dim: int | None = None, shared: bool = False) -> Batch:
    """An all-zero batch of `size` empty crops (every mask False, `key` ""), to `fill` row by row."""
    crop = spec.crop_frames
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "start": ((size,), torch.int64),
        "length": ((size,), torch.int64),
        "body": ((size, crop, POSE_DIM), torch.float32),
        "face": ((size, crop, FACE_DIM), torch.float32),
        "mask": ((size, crop), torch.bool),
        "face_mask": ((size, crop), torch.bool),
        "keyframes": ((size, spec.keyframes, POSE_DIM), torch.float32),
        "keyframe_mask": ((size, spec.keyframes), torch.bool),
    }
    if spec.audio:
        shapes["audio"] = ((size, crop * SAMPLES_PER_FRAME, 2), torch.float32)
    if spec.with_features:
        if feature_dim is None:
            raise ValueError("feature_dim is needed for a batch with features")
        shapes["features"] = ((size, spec.feature_frames, feature_dim), torch.float32)
        shapes["features_mask"] = ((size, spec.feature_frames), torch.bool)
    batch: Batch = {"key": [""] * size}
    batch.update({name: _zeros(shape, dtype, shared) for name, (shape, dtype) in shapes.items()})
    return batch


def fill(
    batch: Batch,
    row: int,
    sample: RawSample,
    start: int,
    length: int,
    spec: CropSpec,
    stats: NormStats,
    *,
    split: str | None = None,
) -> None:
    """Decode frames [start, start + length) of a raw sample, normalize them and write row `row` of `batch`.

    The row must be as `allocate` made it (zeros): padding is left untouched. A sample whose meta.json
    records another split than `split`, the one being read (None: the split its shard's name says),
    is refused (`check_split`).
    """
    check_split(sample, split)
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
    body = load_array(sample, BODY_KEY, POSE_DIM)
    frames = body.shape[0]
    if not (0 <= start and 0 < length <= spec.crop_frames and start + length <= frames):
        raise ValueError(f"crop [{start}, {start + length}) does not fit a window of {frames} frames")
    face = load_array(sample, FACE_KEY, FACE_DIM)
    valid = load_array(sample, FACE_VALID_KEY).astype(bool)
    if face.shape[0] != frames or valid.shape != (frames,):
        raise DataError(f"{where}: body has {frames} frames, face {face.shape[0]}, face_valid {valid.shape}")
    stop = start + length
    batch["key"][row] = str(sample["__key__"])
    batch["start"][row] = start
    batch["length"][row] = length
    batch["mask"].numpy()[row, :length] = True
    out_body = batch["body"].numpy()[row]  # (L, 104)
    # one rounding into the float32 row: float32 stats compute in float32, float64 ones in float64
    np.divide(body[start:stop] - stats.body_mean, stats.body_std, out=out_body[:length])
    face_mask = batch["face_mask"].numpy()[row]  # (L,)
    face_mask[:length] = valid[start:stop]
    out_face = batch["face"].numpy()[row]  # (L, 256)
    np.divide(face[start:stop] - stats.face_mean, stats.face_std, out=out_face[:length])
    out_face[:length][~face_mask[:length]] = 0.0  # missing codes are zeros, whatever the stats
    batch["keyframes"].numpy()[row] = out_body[:: spec.keyframe_interval]
    batch["keyframe_mask"].numpy()[row] = batch["mask"].numpy()[row, :: spec.keyframe_interval]
    if spec.audio:
        load_audio(sample, start, frames, batch["audio"].numpy()[row, : length * SAMPLES_PER_FRAME])
    if spec.with_features:
        _fill_features(batch, row, sample, start, length, frames, spec)


def _fill_features(
    batch: Batch, row: int, sample: RawSample, start: int, length: int, frames: int, spec: CropSpec
) -> None:
    """The 100 Hz features under the crop's audio (start on the feature grid, so the cut is exact)."""
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
    if FEATURES_KEY not in sample:
        raise DataError(f"{where} lacks {FEATURES_KEY} (the manifest says the shards carry features)")
    rate = int(spec.feature_rate_hz or FEATURE_RATE_HZ)
    features = load_array(sample, FEATURES_KEY)
    out = batch["features"].numpy()[row]  # (F, D)
    if features.ndim != 2 or features.shape != (features_frames(frames, rate), out.shape[1]):
        raise DataError(
            f"{where}: {FEATURES_KEY} has shape {features.shape}, expected "
            f"({features_frames(frames, rate)}, {out.shape[1]}) for {frames} frames"
        )
    lo = features_frames(start, rate)
    count = min(features_frames(length, rate), features.shape[0] - lo)
    out[:count] = features[lo : lo + count]
    batch["features_mask"].numpy()[row, :count] = True


def take(batch: Batch, size: int) -> Batch:
    """The first `size` rows of a batch (views)."""
    if size == len(batch["key"]):
        return batch
    return {name: value[:size] for name, value in batch.items()}
