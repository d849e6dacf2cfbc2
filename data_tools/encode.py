"""The per-scene work of a build, done in worker processes: check a scene, or encode its windows.

`summarize_scene` (build step 1) validates a scene and returns its size, checksums and, for train
scenes, the moments of its poses and valid face codes. `encode_scene` (step 2) cuts the scene into
windows and encodes every file of every sample (the table in `a2p.data.format`).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import multiprocessing.connection
import os
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from a2p.constants import FEATURE_RATE_HZ, SAMPLE_RATE, SAMPLES_PER_FEATURE, SAMPLES_PER_FRAME
from a2p.data.format import (
    AUDIO_KEY,
    AUDIO_WAV_KEY,
    BODY_KEY,
    FACE_KEY,
    FACE_VALID_KEY,
    FEATURES_KEY,
    META_KEY,
    features_frames,
    sample_key,
    window_starts,
)
from a2p.errors import DataError
from data_tools.stats import Moments
from data_tools.validate import FLAC_SUBTYPES, Scene, SceneFiles, read_scene

FEATURES_DTYPE = "float16"


@dataclass
class SceneSummary:
    """What step 1 learns about one scene."""

    name: str
    frames: int
    checksums: dict[str, str]
    """Source file name -> sha256."""
    body: Moments | None = None
    """Moments of the (wrapped) poses, for train scenes."""
    face: Moments | None = None
    """Moments of the valid face codes, for train scenes."""


@dataclass
class EncodeJob:
    """Step 2's work for one scene: which windows to encode, and what the sources must still be."""

    files: SceneFiles
    person: str
    split: str
    frames: int
    window_frames: int
    hop_frames: int
    checksums: dict[str, str]
    """The sources' checksums from step 1: a file edited since then is an error, not a mixed shard."""
    featurizer: str | None = None
    featurizer_weights: str | None = None
    skip_windows: int = 0
    """Windows at the start of the scene that finished shards already hold."""

    @property
    def keys(self) -> list[str]:
        """Sample keys of all the scene's windows, in order."""
        starts = window_starts(self.frames, self.window_frames, self.hop_frames)
        return [sample_key(self.files.name, start) for start in starts]


@dataclass
class EncodedSample:
    """One window, encoded: tar member suffix -> bytes, in the order they are written."""

    key: str
    frames: int
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def tar_bytes(self) -> int:
        """Bytes these members take in a tar (header block + data padded to whole blocks)."""
        block = tarfile.BLOCKSIZE
        return sum(block + -(-len(data) // block) * block for data in self.files.values())


def summarize_scene(job: tuple[SceneFiles, str, bool]) -> SceneSummary | DataError:
    """Step 1 for one scene `(files, person, is_train)`; a bad scene's error is returned, not raised,
    so the build can report every bad scene at once."""
    files, person, is_train = job
    try:
        scene = read_scene(files, person)
    except DataError as err:
        return err
    summary = SceneSummary(scene.name, scene.frames, scene.checksums)
    if is_train:
        summary.body = Moments.of(scene.body)
        summary.face = Moments.of(scene.face[scene.face_valid])
    return summary


def encode_scene(job: EncodeJob) -> list[EncodedSample]:
    """Step 2 for one scene: its windows after the first `skip_windows`, encoded, in order."""
    scene = read_scene(job.files, job.person)
    changed = sorted(name for name, digest in scene.checksums.items() if job.checksums.get(name) != digest)
    if changed:
        folder = next(iter(job.files.paths.values())).parent
        raise DataError(f"{folder}: files changed while the build ran: {', '.join(changed)}")
    features = scene_features(scene, job.featurizer, job.featurizer_weights) if job.featurizer else None
    samples = []
    for start in window_starts(scene.frames, job.window_frames, job.hop_frames)[job.skip_windows :]:
        stop = min(start + job.window_frames, scene.frames)
        sample = EncodedSample(sample_key(scene.name, start), stop - start)
        audio_key, audio = audio_bytes(
            scene.audio[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME], scene.audio_subtype
        )
        sample.files[audio_key] = audio
        sample.files[BODY_KEY] = npy_bytes(scene.body[start:stop])
        sample.files[FACE_KEY] = npy_bytes(scene.face[start:stop])
        sample.files[FACE_VALID_KEY] = npy_bytes(scene.face_valid[start:stop])
        if features is not None:
            first = start * SAMPLES_PER_FRAME // SAMPLES_PER_FEATURE  # exact: starts lie on the feature grid
            window = features[first : first + features_frames(sample.frames, FEATURE_RATE_HZ)]
            sample.files[FEATURES_KEY] = npy_bytes(window.astype(FEATURES_DTYPE))
        meta = {
            "person": job.person,
            "scene": scene.name,
            "start": start,
            "frames": sample.frames,
            "scene_frames": scene.frames,
            "split": job.split,
        }
        sample.files[META_KEY] = json.dumps(meta, sort_keys=True).encode()
        samples.append(sample)
    return samples


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def audio_bytes(samples: np.ndarray, subtype: str) -> tuple[str, bytes]:
    """(member suffix, bytes): FLAC in the source's subtype where FLAC holds it, else WAV in that subtype."""
    buffer = io.BytesIO()
    if subtype in FLAC_SUBTYPES:
        sf.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype=subtype)
        return AUDIO_KEY, buffer.getvalue()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype=subtype)
    return AUDIO_WAV_KEY, buffer.getvalue()


WORKER_ORPHANED_EXIT = 1
_limit_threads = False
_featurizers: dict[tuple[str, str | None], Any] = {}


def init_worker() -> None:
    """Run in every worker process: torch gets one thread (the pool is the parallelism), and the
    worker exits when the build process dies."""
    global _limit_threads
    _limit_threads = True
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    """Exit once the parent is gone. A pool's workers hold both ends of their task queue, so after
    the build is killed (SIGKILL, OOM) they would otherwise wait for work forever, holding its
    output pipes open."""
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(WORKER_ORPHANED_EXIT)


def featurizer_info(name: str, weights: str | None) -> dict[str, Any]:
    """The manifest's description of the featurizer `name`."""
    featurizer = _featurizer(name, weights)
    return {
        "name": featurizer.name,
        "version": featurizer.version,
        "dim": featurizer.dim,
        "rate_hz": FEATURE_RATE_HZ,
        "dtype": FEATURES_DTYPE,
        "fingerprint": featurizer.fingerprint,
    }


def _featurizer(name: str, weights: str | None) -> Any:
    """The frozen featurizer, built once per process (torch is imported only when features are asked for)."""
    if (name, weights) not in _featurizers:
        import torch

        from a2p.models.audio import build_featurizer

        if _limit_threads:
            torch.set_num_threads(1)
        _featurizers[(name, weights)] = build_featurizer(name, weights)
    return _featurizers[(name, weights)]


def scene_features(scene: Scene, name: str, weights: str | None) -> np.ndarray:
    """(frames * 10 / 3, D) float32 features of the whole scene (audio scaled to [-1, 1])."""
    import torch

    from a2p.models.audio import featurize_long

    audio = scene.audio.astype(np.float32)
    if scene.audio.dtype.kind == "i":
        audio /= float(-np.iinfo(scene.audio.dtype).min)
    features = featurize_long(_featurizer(name, weights), torch.from_numpy(audio)[None])  # (1, F, D)
    return features[0].numpy()
