"""A person's `data_stats.pth`, the reference's normalization statistics, and its normalization.

facebookresearch/audio2photoreal ships one `dataset/<PERSON>/data_stats.pth` per person: a torch
file of numpy arrays, read through `load_torch_file(path, allow=NUMPY_GLOBALS)` (nothing in it
is run). Its released checkpoints take their inputs and give their outputs in these units.
What the reference uses (data_loaders/data.py `_load_std`, `__getitem__`, `inv_transform`;
sample/generate.py; demo/demo.py), and so what `PersonStats` holds:

| key              | shape       | use                                                          |
|------------------|-------------|--------------------------------------------------------------|
| `pose_mean/std`  | 104, float64 | body poses `(x - mean) / std`, both reshaped to (-1)        |
| `code_mean/std`  | 256, float64 | face codes `(x - mean) / std`, as stored                    |
| `audio_mean`     | 2, float32   | the 48 kHz waveform (S, 2) `(w - mean) / audio_std_flat`    |
| `audio_std_flat` | 1, float32   | one std over both channels (not the per-channel `audio_std`) |

There is no floor and no epsilon: the stds are divided by as stored (a2p's manifest stats floor
them, `a2p.data.decode.NormStats`). The other arrays some files hold (`audio_std`,
`pose_std_flat`, `code_std_flat`, `full*`, `facekp_*`) are never read by the reference and are
ignored here. De-normalization is `x * std + mean` with the same arrays.

Precision follows the reference's arithmetic, whose numpy/torch promotion of the input with
the stored arrays sets the dtype: motion (float32 or float64) against float64 stats computes
and returns float64 (the reference then feeds the model `float32` of that, in its collate);
the float32 waveform against float32 stats stays float32. The same holds for tensors and arrays.
The face's missing frames are zeroed after normalization by the loader (`crops.py` does so
too), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from a2p.constants import AUDIO_CHANNELS, FACE_DIM, POSE_DIM
from a2p.errors import DataError
from a2p.models.torch_files import NUMPY_GLOBALS, load_torch_file

STATS_FILENAME = "data_stats.pth"
"""The stats file's name in a recorded person folder (the reference's `dataset/<PERSON>/`)."""

WHAT = "a data_stats.pth (the reference's per-person normalization statistics)"

Array = TypeVar("Array", np.ndarray, Tensor)
MotionKind = Literal["body", "face"]

_FIELDS = (
    ("pose_mean", "body_mean", POSE_DIM),
    ("pose_std", "body_std", POSE_DIM),
    ("code_mean", "face_mean", FACE_DIM),
    ("code_std", "face_std", FACE_DIM),
    ("audio_mean", "audio_mean", AUDIO_CHANNELS),
    ("audio_std_flat", "audio_std_flat", None),
)
"""(reference key, field, elements) of the arrays the reference reads; None: 1 or one per channel."""


@dataclass(frozen=True)
class PersonStats:
    """The normalization statistics of one person, as stored in its `data_stats.pth`."""

    body_mean: np.ndarray
    """(104,) `pose_mean` reshaped to (-1); float64 in the released files."""
    body_std: np.ndarray
    """(104,) `pose_std` reshaped to (-1)."""
    face_mean: np.ndarray
    """(256,) `code_mean`."""
    face_std: np.ndarray
    """(256,) `code_std`."""
    audio_mean: np.ndarray
    """(2,) `audio_mean`, per channel; float32 in the released files."""
    audio_std_flat: np.ndarray
    """(1,) `audio_std_flat`, one std over both channels ((2,) in files a2p's synth writes)."""
    source: str = ""
    """Where the stats were read from, for messages."""

    def to_lists(self) -> dict[str, list[float]]:
        """The six arrays under their field names as lists (JSON keeps float64 exactly): the
        stats of a manifest's `person_stats` and of an export's `stats`."""
        return {name: getattr(self, name).tolist() for _, name, _ in _FIELDS}

    def motion_moments(self, kind: MotionKind) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of body poses (104,) or face codes (256,)."""
        if kind == "body":
            return self.body_mean, self.body_std
        if kind == "face":
            return self.face_mean, self.face_std
        raise ValueError(f"motion kind must be 'body' or 'face', got {kind!r}")

    def normalize_motion(self, motion: Array, kind: MotionKind) -> Array:
        """`(motion - mean) / std` over the last axis (..., 104 or 256): float64 for float64 stats."""
        mean, std = self.motion_moments(kind)
        return _normalize(motion, mean, std)

    def denormalize_motion(self, motion: Array, kind: MotionKind) -> Array:
        """`motion * std + mean` over the last axis: the reference's de-normalized model output."""
        mean, std = self.motion_moments(kind)
        return _denormalize(motion, mean, std)

    def normalize_audio(self, waveform: Array) -> Array:
        """`(waveform - audio_mean) / audio_std_flat` of a waveform (..., S, 2), channels last."""
        return _normalize(waveform, self.audio_mean, self.audio_std_flat)

    def denormalize_audio(self, waveform: Array) -> Array:
        """`waveform * audio_std_flat + audio_mean` of a waveform (..., S, 2)."""
        return _denormalize(waveform, self.audio_mean, self.audio_std_flat)


def load_person_stats(path: str | Path) -> PersonStats:
    """The `PersonStats` of the `data_stats.pth` at `path` (or of the person folder holding one).

    Raises `DataError` naming the file for a missing or unreadable file, one that is not a
    data_stats.pth, a missing key, a wrong shape, and non-finite or non-positive stds.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATS_FILENAME
    stored = load_torch_file(path, allow=NUMPY_GLOBALS, what=WHAT)
    keys = [key for key, _, _ in _FIELDS]
    missing = [key for key in keys if key not in stored]
    if len(missing) == len(keys):
        shown = ", ".join(sorted(map(str, stored))[:8]) or "nothing"
        raise DataError(f"{path}: not {WHAT}: it holds {shown}, none of {', '.join(keys)}")
    if missing:
        raise DataError(f"{path}: {WHAT} without {', '.join(missing)}")
    arrays: dict[str, np.ndarray] = {}
    for key, name, elements in _FIELDS:
        arrays[name] = _array(stored[key], key, elements, path)
    return PersonStats(**arrays, source=str(path))


def person_stats_path(folder: str | Path) -> Path | None:
    """The `data_stats.pth` of a recorded person folder, or None when it has none."""
    path = Path(folder) / STATS_FILENAME
    return path if path.is_file() else None


def _array(value: Any, key: str, elements: int | None, path: Path) -> np.ndarray:
    """A stored stat as a flat numpy array of its own dtype, checked."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()  # a2p's synth writes tensors
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise DataError(
            f"{path}: {key!r} is a {type(value).__name__} ({getattr(value, 'dtype', '')}), not a float array"
        )
    flat = value.reshape(-1)
    if elements is None:  # audio_std_flat: one std, or one per channel
        if flat.size not in (1, AUDIO_CHANNELS):
            raise DataError(
                f"{path}: {key!r} must hold 1 (or {AUDIO_CHANNELS}) numbers, got shape {value.shape}"
            )
    elif flat.size != elements:
        raise DataError(f"{path}: {key!r} must hold {elements} numbers, got shape {value.shape}")
    if not np.isfinite(flat).all():
        raise DataError(f"{path}: {key!r} holds non-finite numbers")
    if "std" in key and not (flat > 0).all():
        raise DataError(f"{path}: {key!r} holds stds that are not positive (min {flat.min()})")
    return flat


def _normalize(x: Array, mean: np.ndarray, std: np.ndarray) -> Array:
    if isinstance(x, Tensor):
        mean_t, std_t = _as_tensors(x, mean, std)
        return (x - mean_t) / std_t
    return (np.asarray(x) - mean) / std


def _denormalize(x: Array, mean: np.ndarray, std: np.ndarray) -> Array:
    if isinstance(x, Tensor):
        mean_t, std_t = _as_tensors(x, mean, std)
        return x * std_t + mean_t
    return np.asarray(x) * std + mean


def _as_tensors(x: Tensor, mean: np.ndarray, std: np.ndarray) -> tuple[Tensor, Tensor]:
    """The stats as tensors on x's device in their own dtype, so torch promotes as the reference's mixed code does."""
    return torch.from_numpy(mean).to(x.device), torch.from_numpy(std).to(x.device)
