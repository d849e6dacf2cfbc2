"""Re-read every shard of a person and check it against its manifest (`a2p data verify`).

Uses only the standard library's `tarfile` plus numpy and soundfile, so it checks the shards as
any reader would see them. Every problem is collected (not just the first), each naming its file.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from a2p.constants import (
    AUDIO_CHANNELS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    WRAPPED_POSE_CHANNEL,
    WRAPPED_POSE_PEOPLE,
)
from a2p.data.format import (
    AUDIO_KEYS,
    BODY_KEY,
    FACE_KEY,
    FACE_VALID_KEY,
    FEATURES_KEY,
    MANIFEST_NAME,
    META_KEY,
    SAMPLE_FILES,
    SHARD_PATTERN,
    Manifest,
    ShardInfo,
    features_frames,
    frames_to_hours,
    load_manifest,
)
from a2p.fileio import file_sha256
from data_tools.validate import TWO_PI

logger = logging.getLogger(__name__)


@dataclass
class SplitSummary:
    """What verify found in one split."""

    shards: int = 0
    samples: int = 0
    window_frames: int = 0
    """Frames summed over windows (overlaps counted twice)."""
    scene_frames: dict[str, int] = field(default_factory=dict)
    """Scene -> its frame count, from the samples' meta."""

    @property
    def frames(self) -> int:
        """Distinct frames: every scene once."""
        return sum(self.scene_frames.values())

    @property
    def hours(self) -> float:
        return frames_to_hours(self.frames)


@dataclass
class VerifyReport:
    """The outcome of verifying one person's shards."""

    manifest: Manifest
    splits: dict[str, SplitSummary]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shards(shard_dir: str | Path) -> VerifyReport:
    """Check the manifest's stats, and every shard in `shard_dir` against the manifest; collects every problem found."""
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    problems = _check_stats(shard_dir / MANIFEST_NAME, manifest)
    splits: dict[str, SplitSummary] = {}
    total = sum(len(info.shards) for info in manifest.splits.values())
    with tqdm(total=total, desc=f"verify {manifest.person}", unit="shard", disable=None) as progress:
        for split, info in manifest.splits.items():
            summary = splits[split] = SplitSummary()
            for shard in info.shards:
                problems.extend(_check_shard(shard_dir, shard, split, manifest, summary))
                progress.update()
            problems.extend(_check_split(shard_dir, split, info, summary))
    listed = {shard.name for info in manifest.splits.values() for shard in info.shards}
    for path in sorted(shard_dir.glob("*.tar")):
        if SHARD_PATTERN.match(path.name) and path.name not in listed:
            problems.append(f"{path}: a shard the manifest does not list")
    return VerifyReport(manifest, splits, problems)


def _check_stats(where: Path, manifest: Manifest) -> list[str]:
    """Normalization stats that are not finite numbers: one NaN mean or std makes every normalized frame NaN."""
    problems = []
    for field_name, stats in (("stats", manifest.stats), ("person_stats", manifest.person_stats)):
        if stats is None:
            continue
        if not isinstance(stats, dict):
            problems.append(f"{where}: {field_name} is not a mapping of names to numbers")
            continue
        for key, values in stats.items():
            try:
                array = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                problems.append(f"{where}: {field_name}.{key} is not a list of numbers")
                continue
            bad = np.flatnonzero(~np.isfinite(array))
            if bad.size:
                problems.append(
                    f"{where}: {field_name}.{key} holds NaN or Inf "
                    f"({bad.size} of {array.size} values, first at index {int(bad[0])})"
                )
    return problems


def _check_split(shard_dir: Path, split: str, info: Any, summary: SplitSummary) -> list[str]:
    where = f"{shard_dir / MANIFEST_NAME} [{split}]"
    problems = []
    if summary.samples != info.samples:
        problems.append(f"{where}: lists {info.samples} samples, the shards hold {summary.samples}")
    if summary.frames != info.frames:
        problems.append(f"{where}: lists {info.frames} frames, the shards' scenes have {summary.frames}")
    if sorted(summary.scene_frames) != sorted(info.scenes):
        problems.append(
            f"{where}: lists scenes {info.scenes}, the shards hold {sorted(summary.scene_frames)}"
        )
    return problems


def _check_shard(
    shard_dir: Path, shard: ShardInfo, split: str, manifest: Manifest, summary: SplitSummary
) -> list[str]:
    path = shard_dir / shard.name
    if not path.is_file():
        return [f"{path}: listed in the manifest but missing"]
    summary.shards += 1
    problems = []
    size = path.stat().st_size
    if shard.bytes and size != shard.bytes:
        problems.append(f"{path}: {size} bytes, the manifest says {shard.bytes} (truncated or changed)")
    if shard.sha256 and file_sha256(path) != shard.sha256:
        problems.append(f"{path}: sha256 differs from the manifest (corrupt or changed)")
    samples = frames = 0
    seen: set[str] = set()
    try:
        for key, files in _samples(path):
            if key in seen:
                problems.append(f"{path}: sample {key} appears twice (its files are not contiguous)")
            seen.add(key)
            sample_problems, sample_frames = _check_sample(files, split, manifest)
            problems.extend(f"{path}: sample {key}: {p}" for p in sample_problems)
            samples, frames = samples + 1, frames + sample_frames
            try:
                meta = json.loads(files[META_KEY])
                summary.scene_frames[meta["scene"]] = int(meta["scene_frames"])
            except (KeyError, ValueError, TypeError):
                pass  # already reported by _check_sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        problems.append(f"{path}: corrupt or truncated tar ({err})")
    if samples != shard.samples:
        problems.append(f"{path}: holds {samples} samples, the manifest says {shard.samples}")
    if frames != shard.frames:
        problems.append(f"{path}: holds {frames} frames, the manifest says {shard.frames}")
    summary.samples += samples
    summary.window_frames += frames
    return problems


def _samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of each sample of a tar, one sample in memory at a time.

    A writer puts a sample's files next to each other (as WebDataset readers expect), so a new key
    starts a new sample.
    """
    with tarfile.open(path, mode="r:") as tar:
        key = ""
        files: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            member_key, _, suffix = member.name.partition(".")
            if member_key != key and files:
                yield key, files
                files = {}
            key = member_key
            reader = tar.extractfile(member)
            files[suffix] = reader.read() if reader else b""
        if files:
            yield key, files


def _npy(files: dict[str, bytes], name: str, problems: list[str]) -> np.ndarray | None:
    try:
        return np.load(io.BytesIO(files[name]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        problems.append(f"{name} is not a readable .npy ({err})")
        return None


def _check_array(
    array: np.ndarray | None, name: str, shape: tuple[int, ...], dtype: Any, problems: list[str]
) -> None:
    if array is None:
        return
    if array.shape != shape:
        problems.append(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype != np.dtype(dtype):
        problems.append(f"{name} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        problems.append(f"{name} holds NaN or Inf")


def _check_sample(files: dict[str, bytes], split: str, manifest: Manifest) -> tuple[list[str], int]:
    """Problems of one sample, and its frame count."""
    problems: list[str] = []
    expected = set(SAMPLE_FILES) | ({FEATURES_KEY} if manifest.features else set())
    audio_keys = [k for k in AUDIO_KEYS if k in files]
    missing = sorted(expected - set(files))
    extra = sorted(set(files) - expected - set(AUDIO_KEYS))
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected files {extra}")
    if len(audio_keys) != 1:
        problems.append(f"needs exactly one of {list(AUDIO_KEYS)}, has {audio_keys}")
    if META_KEY not in files or BODY_KEY not in files:
        return problems, 0
    try:
        meta = json.loads(files[META_KEY])
        frames = int(meta["frames"])
        if meta.get("split") != split or meta.get("person") != manifest.person:
            problems.append(
                f"meta says {meta.get('person')}/{meta.get('split')}, expected {manifest.person}/{split}"
            )
    except (ValueError, KeyError, TypeError) as err:
        return [*problems, f"unreadable {META_KEY} ({err})"], 0
    body = _npy(files, BODY_KEY, problems)
    _check_array(body, BODY_KEY, (frames, manifest.pose_dim), np.float32, problems)
    if manifest.person in WRAPPED_POSE_PEOPLE and body is not None and body.ndim == 2:
        angles = body[:, WRAPPED_POSE_CHANNEL] if body.shape[1] > WRAPPED_POSE_CHANNEL else np.zeros(0)
        if not ((angles >= 0) & (angles < TWO_PI)).all():
            problems.append(f"{BODY_KEY} channel {WRAPPED_POSE_CHANNEL} is not wrapped into [0, 2 pi)")
    face = valid = None
    if FACE_KEY in files:
        face = _npy(files, FACE_KEY, problems)
        _check_array(face, FACE_KEY, (frames, manifest.face_dim), np.float32, problems)
    if FACE_VALID_KEY in files:
        valid = _npy(files, FACE_VALID_KEY, problems)
        _check_array(valid, FACE_VALID_KEY, (frames,), np.bool_, problems)
    if face is not None and valid is not None and face.shape[:1] == valid.shape and valid.dtype == np.bool_:
        if np.any(face[~valid] != 0):
            problems.append(
                f"{FACE_KEY} holds codes in frames {FACE_VALID_KEY} marks missing (must be zeros)"
            )
    if manifest.features and FEATURES_KEY in files:
        shape = (features_frames(frames, manifest.features["rate_hz"]), manifest.features["dim"])
        dtype = manifest.features.get("dtype", "float16")
        _check_array(_npy(files, FEATURES_KEY, problems), FEATURES_KEY, shape, dtype, problems)
    if len(audio_keys) == 1:
        problems.extend(_check_audio(files[audio_keys[0]], audio_keys[0], frames))
    return problems, frames


def _check_audio(data: bytes, name: str, frames: int) -> list[str]:
    try:
        audio, rate = sf.read(io.BytesIO(data), always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        return [f"{name} is not readable audio ({err})"]
    problems = []
    if rate != SAMPLE_RATE:
        problems.append(f"{name} is at {rate} Hz, expected {SAMPLE_RATE}")
    if audio.shape[1] != AUDIO_CHANNELS:
        problems.append(f"{name} has {audio.shape[1]} channels, expected {AUDIO_CHANNELS}")
    if audio.shape[0] != SAMPLES_PER_FRAME * frames:
        problems.append(
            f"{name} has {audio.shape[0]} samples, expected {SAMPLES_PER_FRAME * frames} "
            f"= {SAMPLES_PER_FRAME} x {frames} frames"
        )
    if not np.isfinite(audio).all():
        problems.append(f"{name} holds NaN or Inf")
    return problems
