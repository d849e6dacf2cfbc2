"""Tiny shards for the loader tests, written with `webdataset.TarWriter` as `a2p.data.format` lays them out.

Every value says where it came from, so a test can check alignment exactly. For frame `f` of its
scene (window start + frame within the window):

- `body[f, 0] = f`, `body[f, 1] =` scene number, other channels seeded noise;
- `face[f, 0] = f` (zeros where the face is missing: `f % 7 == 3`), `face_valid[f] = f % 7 != 3`;
- audio (16-bit FLAC): channel 0 holds `f` and channel 1 the sample's index within its frame
  (0..1599), both as integers / 32768;
- features (float16) at scene feature frame `u`: `[u, 0] = u % 1000`, `[u, 1] = u // 1000`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds

from a2p.constants import FACE_DIM, FPS, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.data.format import (
    AUDIO_KEY,
    BODY_KEY,
    FACE_KEY,
    FACE_VALID_KEY,
    FEATURES_KEY,
    META_KEY,
    Manifest,
    ShardInfo,
    SplitInfo,
    features_frames,
    frames_to_hours,
    sample_key,
    save_manifest,
    shard_name,
    window_starts,
)

PERSON = "TXB805"
AUDIO_SCALE = 32768.0


def missing_face(frames: np.ndarray) -> np.ndarray:
    """Which scene frames have no face code."""
    return frames % 7 == 3


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def window_sample(
    scene: str, number: int, start: int, frames: int, scene_frames: int, split: str, feature_dim: int | None
) -> dict[str, bytes | str]:
    """The files of one window (`frames` frames from `start`) of a test scene."""
    f = np.arange(start, start + frames)
    rng = np.random.default_rng([number, start])
    body = rng.normal(size=(frames, POSE_DIM)).astype(np.float32)
    body[:, 0], body[:, 1] = f, number
    face = rng.normal(size=(frames, FACE_DIM)).astype(np.float32)
    face[:, 0] = f
    valid = ~missing_face(f)
    face[~valid] = 0.0
    audio = np.empty((frames * SAMPLES_PER_FRAME, 2), np.int16)
    audio[:, 0] = np.repeat(f, SAMPLES_PER_FRAME)
    audio[:, 1] = np.tile(np.arange(SAMPLES_PER_FRAME), frames)
    stream = io.BytesIO()
    sf.write(stream, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    key = sample_key(scene, start)
    sample: dict[str, bytes | str] = {
        "__key__": key,
        AUDIO_KEY: stream.getvalue(),
        BODY_KEY: _npy(body),
        FACE_KEY: _npy(face),
        FACE_VALID_KEY: _npy(valid),
        META_KEY: json.dumps(
            {
                "person": PERSON,
                "scene": scene,
                "start": start,
                "frames": frames,
                "scene_frames": scene_frames,
                "split": split,
            }
        ).encode(),
    }
    if feature_dim is not None:
        first = features_frames(start, 100)
        u = np.arange(first, first + features_frames(frames, 100))
        features = rng.normal(size=(len(u), feature_dim)).astype(np.float16)
        features[:, 0], features[:, 1] = u % 1000, u // 1000
        sample[FEATURES_KEY] = _npy(features)
    return sample


def write_shards(
    root: Path,
    splits: dict[str, list[int]],
    *,
    window: int = 700,
    hop: int = 600,
    per_shard: int = 2,
    feature_dim: int | None = None,
    stats: dict[str, list[float]] | None = None,
    person_stats: dict[str, list[float]] | None = None,
    nan_keys: frozenset[str] = frozenset(),
) -> Manifest:
    """Write shards and a manifest under `root`: `splits` maps a split to its scenes' frame counts.

    Scenes are numbered across splits (`scene00`, `scene01`, ...); each is cut into windows of
    `window` frames every `hop` frames; shards hold `per_shard` windows. `stats` default to mean 0,
    std 1 (normalization leaves values unchanged).
    """
    root.mkdir(parents=True, exist_ok=True)
    infos: dict[str, SplitInfo] = {}
    number = 0
    for split, scene_frames in splits.items():
        samples = []
        scenes = []
        for frames in scene_frames:
            scene = f"scene{number:02d}"
            scenes.append(scene)
            for start in window_starts(frames, window, hop):
                length = min(window, frames - start)
                sample = window_sample(scene, number, start, length, frames, split, feature_dim)
                if sample["__key__"] in nan_keys:  # one NaN pose value, as a corrupt recording would hold
                    body = np.load(io.BytesIO(sample[BODY_KEY]))  # type: ignore[arg-type]
                    body[length // 2, 5] = np.nan
                    sample[BODY_KEY] = _npy(body)
                samples.append(sample)
            number += 1
        info = SplitInfo(scenes=scenes, samples=len(samples), frames=sum(scene_frames))
        info.hours = frames_to_hours(info.frames)
        for index in range(0, len(samples), per_shard):
            group = samples[index : index + per_shard]
            path = root / shard_name(split, index // per_shard)
            with wds.TarWriter(str(path)) as writer:
                for sample in group:
                    writer.write(sample)
            data = path.read_bytes()
            frames = sum(len(np.load(io.BytesIO(s[BODY_KEY]))) for s in group)  # type: ignore[arg-type]
            info.shards.append(
                ShardInfo(
                    path.name, len(group), frames, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
            )
        infos[split] = info
    if stats is None:
        stats = {
            "body_mean": [0.0] * POSE_DIM,
            "body_std": [1.0] * POSE_DIM,
            "face_mean": [0.0] * FACE_DIM,
            "face_std": [1.0] * FACE_DIM,
        }
    features = None
    if feature_dim is not None:
        features = {"name": "test", "version": "1", "dim": feature_dim, "rate_hz": 100, "dtype": "float16"}
    manifest = Manifest(
        person=PERSON,
        splits=infos,
        stats=stats,
        window_frames=window,
        hop_frames=hop,
        features=features,
        fps=FPS,
        person_stats=person_stats,
    )
    save_manifest(manifest, root)
    return manifest
