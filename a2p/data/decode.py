"""Reading shards: raw samples out of a tar file, cheap headers, and decoding only what a crop needs.

A raw sample is what WebDataset's tar iterator groups under one key: `{"__key__": str, "__url__": str,
"body.npy": bytes, ...}` (file names as in `a2p.data.format`). Nothing is decoded until a crop has
been drawn, so skipping samples (resume) and holding them in a shuffle buffer cost no decoding, and
only the crop's stretch of the (lossless, seekable) audio is ever decompressed.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import soundfile as sf
from webdataset.tariterators import group_by_keys

from a2p.constants import AUDIO_CHANNELS, FACE_DIM, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.data.format import (
    AUDIO_KEYS,
    BODY_KEY,
    META_KEY,
    SAMPLE_FILES,
    Manifest,
    Units,
)
from a2p.errors import DataError

RawSample = dict[str, Any]
"""One undecoded sample: `__key__`, `__url__` and the bytes of each of its files."""

STD_FLOOR = 1e-6
"""Standard deviations below this (constant channels) normalize with 1 instead (no division by ~0)."""
SHARD_NAME_SPLIT = re.compile(r"(?:^|_)(train|val|test)-\d{6}\.tar$")
"""The split in a shard's file name `{split}-{index:06d}.tar`, also behind the shard cache's `{digest}_`."""


def iter_shard(
    path: str | Path, expected_samples: int | None = None, expected_bytes: int = 0
) -> Iterator[RawSample]:
    """The raw samples of one tar shard, in file order.

    Raises `DataError` naming the shard when it is missing, corrupt or truncated, when a sample lacks
    one of its files, or when the number of samples differs from `expected_samples` (the manifest's
    count: a tar cut at a member boundary reads as a clean, shorter file, so counting is the check).
    """
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DataError(f"{path}: shard cannot be read ({err.strerror or err})") from err
    if expected_bytes and size != expected_bytes:
        raise DataError(
            f"{path}: shard is {size} bytes, the manifest says {expected_bytes}: truncated or replaced"
        )
    count = 0
    try:
        for sample in group_by_keys(_tar_members(path)):
            check_sample(sample, path)
            count += 1
            yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path}: corrupt or truncated shard ({err.args[0] if err.args else err})") from err
    if expected_samples is not None and count != expected_samples:
        raise DataError(
            f"{path}: shard holds {count} samples, the manifest says {expected_samples}: truncated?"
        )


def _tar_members(path: Path) -> Iterator[dict[str, Any]]:
    """`{fname, data, __url__}` of each regular file of a local tar, for WebDataset's `group_by_keys`.

    Random-access mode reads each member with one call (WebDataset's stream reader goes through
    10 kB blocks, which costs a third of decoding the audio).
    """
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isreg():
                reader = tar.extractfile(member)
                assert reader is not None
                yield {"fname": member.name, "data": reader.read(), "__url__": str(path)}


def check_sample(sample: RawSample, shard: str | Path) -> None:
    """Raise `DataError` if the sample lacks a file every sample must hold."""
    missing = [name for name in SAMPLE_FILES if name not in sample]
    if not any(name in sample for name in AUDIO_KEYS):
        missing.append(" or ".join(AUDIO_KEYS))
    if missing:
        raise DataError(f"{shard}: sample {sample.get('__key__')!r} lacks {', '.join(missing)}")


def npy_shape(data: bytes) -> tuple[int, ...]:
    """The shape stored in a `.npy` file's header, without reading its data."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(stream)
    return tuple(shape)


def sample_frames(sample: RawSample) -> int:
    """Number of motion frames of a raw sample (from the body array's header: no decoding)."""
    try:
        return npy_shape(sample[BODY_KEY])[0]
    except (ValueError, IndexError) as err:
        raise DataError(
            f"{sample.get('__url__')}: sample {sample.get('__key__')!r} has a bad {BODY_KEY}"
        ) from err


def check_split(sample: RawSample, split: str | None = None) -> None:
    """Raise `DataError` if the sample's meta.json records another split than `split`, the one being read.

    A shard swapped between splits (a test shard renamed train-000000.tar, the manifest still listing
    it) would otherwise train on test data. Reads only the small meta.json, never the audio. With
    `split` None the expected split is the one the shard's file name says, as the manifest lists it;
    a shard whose name says none (a `pipe:` command) is then not checked.
    """
    url = str(sample.get("__url__", ""))
    expected, source = split, "the split being read"
    if expected is None:
        named = SHARD_NAME_SPLIT.search(PurePosixPath(url).name)
        if named is None:
            return
        expected, source = named.group(1), "the split its shard's name says"
    where = f"{url}: sample {sample.get('__key__')!r}"
    try:
        recorded = json.loads(sample[META_KEY]).get("split")
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{where}: unreadable {META_KEY} ({err})") from err
    if recorded != expected:
        raise DataError(
            f"{where}: {META_KEY} says split {recorded!r}, but it is read as {expected!r} ({source}): "
            "a shard swapped between splits? Rebuild the shards with `a2p data build`"
        )


def window_start(key: str) -> int:
    """The window's first frame within its scene, from its key `{scene}_{start:06d}` (0 if it has none)."""
    tail = key.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def load_array(sample: RawSample, name: str, width: int | None = None) -> np.ndarray:
    """Decode one `.npy` file of a sample, checking its width (`width`) when given."""
    try:
        array = np.load(io.BytesIO(sample[name]), allow_pickle=False)
    except ValueError as err:
        raise DataError(
            f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: bad {name} ({err})"
        ) from err
    if width is not None and (array.ndim != 2 or array.shape[1] != width):
        raise DataError(
            f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: {name} has shape {array.shape}, "
            f"expected (T, {width})"
        )
    return array


def load_audio(sample: RawSample, start: int, frames: int, out: np.ndarray) -> None:
    """Decode the audio of motion frames [start, start + len(out) / 1600) of a window of `frames` frames.

    Seeks in the lossless file, decodes only that stretch, and writes it as float32 into `out`
    (C-contiguous, (length * 1600, 2)).
    """
    name = next(n for n in AUDIO_KEYS if n in sample)
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: {name}"
    try:
        with sf.SoundFile(io.BytesIO(sample[name])) as audio:
            if audio.samplerate != SAMPLE_RATE or audio.channels != AUDIO_CHANNELS:
                raise DataError(
                    f"{where} is {audio.samplerate} Hz x {audio.channels} channels, "
                    f"expected {SAMPLE_RATE} Hz x {AUDIO_CHANNELS}"
                )
            if audio.frames != frames * SAMPLES_PER_FRAME:
                raise DataError(
                    f"{where} holds {audio.frames} samples, expected {SAMPLES_PER_FRAME} x {frames}"
                )
            audio.seek(start * SAMPLES_PER_FRAME)
            read = audio.read(len(out), dtype="float32", always_2d=True, out=out)
    except sf.LibsndfileError as err:
        raise DataError(f"{where} cannot be decoded ({err})") from err
    if len(read) != len(out):
        raise DataError(f"{where} ended after {len(read)} of {len(out)} samples")


@dataclass(frozen=True)
class NormStats:
    """Per-channel mean and std of body poses and face codes: the train split's (float32) or the person's (float64)."""

    body_mean: np.ndarray
    body_std: np.ndarray
    face_mean: np.ndarray
    face_std: np.ndarray

    @classmethod
    def from_manifest(cls, manifest: Manifest, source: str = "manifest", units: Units = "train") -> NormStats:
        """The manifest's stats in `units` (`Manifest.units_stats`).

        The train split's (float32) stds below `STD_FLOOR` become 1, so constant channels stay
        finite. A data_stats.pth is used as the reference uses it: in float64, divided by as stored
        (its stds were checked positive when the shards were built), rounded to float32 once.
        """
        chosen, stats = manifest.units_stats(units, source)
        arrays = {}
        for name, width in (
            ("body_mean", POSE_DIM),
            ("body_std", POSE_DIM),
            ("face_mean", FACE_DIM),
            ("face_std", FACE_DIM),
        ):
            if name not in stats:
                raise DataError(f"{source}: {chosen} stats lack {name!r}")
            value = np.asarray(stats[name], dtype=np.float64 if chosen == "person" else np.float32)
            if value.shape != (width,) or not np.isfinite(value).all():
                raise DataError(
                    f"{source}: {chosen} stats {name!r} must be {width} finite numbers, got shape {value.shape}"
                )
            if name.endswith("_std") and chosen == "train":
                value = np.where(value < STD_FLOOR, np.float32(1.0), value)
            arrays[name] = value
        return cls(**arrays)

    @classmethod
    def identity(cls) -> NormStats:
        """Mean 0, std 1: normalization that changes nothing."""
        return cls(
            body_mean=np.zeros(POSE_DIM, np.float32),
            body_std=np.ones(POSE_DIM, np.float32),
            face_mean=np.zeros(FACE_DIM, np.float32),
            face_std=np.ones(FACE_DIM, np.float32),
        )
