"""Finding, reading and validating the recorded scenes of one person folder (DESIGN.md, "Data, as recorded").

Every problem is a `DataError` that names the file and says what is wrong. Each file is read once
as bytes, hashed, and parsed from those same bytes, so the checksum a manifest records is the
checksum of exactly the data that went into the shards.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from a2p.constants import (
    AUDIO_CHANNELS,
    FACE_DIM,
    POSE_DIM,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    TEST_SCENES,
    VAL_SCENES,
    WRAPPED_POSE_CHANNEL,
    WRAPPED_POSE_PEOPLE,
)
from a2p.errors import DataError
from a2p.fileio import file_sha256

logger = logging.getLogger(__name__)

AUDIO_SUFFIX = "audio.wav"
BODY_SUFFIX = "body_pose.npy"
FACE_SUFFIX = "face_expression.npy"
MISSING_FACE_SUFFIX = "missing_face_frames.npy"
SCENE_SUFFIXES = (AUDIO_SUFFIX, BODY_SUFFIX, FACE_SUFFIX, MISSING_FACE_SUFFIX)
"""The four companion files every scene `sceneNN` has: `sceneNN_{suffix}`."""
SCENE_FILE_PATTERN = re.compile(r"^(scene(\d+))_(.+)$")
COPY_SIGNAL_SUFFIXES = (AUDIO_SUFFIX, BODY_SUFFIX)
"""Companion files no two recordings share byte for byte (two scenes may share an empty list of
missing face frames, or an all-zero face track)."""

MIN_SCENES = VAL_SCENES + TEST_SCENES + 1
"""A person needs at least one training scene besides the validation and test scenes."""

TWO_PI = 2.0 * math.pi

AUDIO_READ_DTYPES = {
    "PCM_S8": "int16",
    "PCM_U8": "int16",
    "PCM_16": "int16",
    "PCM_24": "int32",
    "PCM_32": "int32",
    "FLOAT": "float32",
    "DOUBLE": "float64",
}
"""Audio subtypes a2p reads, and the dtype that holds their samples exactly (soundfile scales
narrower PCM up, and writing that dtype back in the same subtype scales it down again)."""
FLAC_SUBTYPES = frozenset({"PCM_S8", "PCM_16", "PCM_24"})
"""Subtypes FLAC holds losslessly; the others are stored as WAV in their own subtype."""


@dataclass
class SceneFiles:
    """The companion files of one scene `sceneNN` in a person folder."""

    name: str
    """`sceneNN`, as in the file names; it becomes part of every sample key."""
    number: int
    """NN, the scene's place in the recording order."""
    paths: dict[str, Path]
    """Suffix (`audio.wav`, ...) -> file."""


@dataclass
class Scene:
    """One validated scene, ready to be cut into windows."""

    name: str
    audio: np.ndarray
    """(frames * SAMPLES_PER_FRAME, 2) samples in the dtype that holds `audio_subtype` exactly."""
    audio_subtype: str
    """The recording's soundfile subtype (`PCM_16`, `FLOAT`, ...)."""
    body: np.ndarray
    """(frames, POSE_DIM) float32, channel 3 wrapped into [0, 2 pi) for capture 1/2 people."""
    face: np.ndarray
    """(frames, FACE_DIM) float32, missing frames zeroed."""
    face_valid: np.ndarray
    """(frames,) bool, False where the face code is missing."""
    checksums: dict[str, str] = field(default_factory=dict)
    """Source file name -> sha256."""

    @property
    def frames(self) -> int:
        return int(self.body.shape[0])


def scene_splits(num_scenes: int) -> list[str]:
    """The split of each scene in scene order: all but the last 6 train, then 2 val, then 4 test."""
    train = num_scenes - VAL_SCENES - TEST_SCENES
    return ["train"] * train + ["val"] * VAL_SCENES + ["test"] * TEST_SCENES


def find_scenes(person_dir: Path) -> list[SceneFiles]:
    """The scenes of a person folder in scene order, each with all four companion files.

    Anything else in the folder is passed over with one warning naming every such file, since a
    misnamed scene file (`Scene05_audio.wav`, `scene_05_body_pose.npy`) would otherwise drop out of
    the build unnoticed; `data_stats.pth` and hidden files are passed over quietly. One scene number
    written two ways (`scene5_*` beside `scene05_*`) is refused: both would enter the build.
    """
    if not person_dir.is_dir():
        raise DataError(f"{person_dir}: no such folder (expected one folder per person of sceneNN_* files)")
    from a2p.data.person_stats import STATS_FILENAME  # imports torch, which the scene workers never need

    found: dict[str, SceneFiles] = {}
    strays: list[str] = []
    for path in sorted(person_dir.iterdir()):
        if path.name.startswith(".") or path.name == STATS_FILENAME:
            continue
        match = SCENE_FILE_PATTERN.match(path.name)
        if match is None or match.group(3) not in SCENE_SUFFIXES or not path.is_file():
            strays.append(path.name)
            continue
        name, number, suffix = match.group(1), int(match.group(2)), match.group(3)
        found.setdefault(name, SceneFiles(name, number, {})).paths[suffix] = path
    if strays:
        logger.warning(
            "%s: ignoring %d file(s) that are not scene files sceneNN_{%s} (a misnamed scene is left out "
            "of the build): %s",
            person_dir,
            len(strays),
            ",".join(SCENE_SUFFIXES),
            ", ".join(strays),
        )
    if not found:
        raise DataError(
            f"{person_dir}: no scenes found (expected files like scene01_{AUDIO_SUFFIX}, "
            f"scene01_{BODY_SUFFIX}, scene01_{FACE_SUFFIX}, scene01_{MISSING_FACE_SUFFIX})"
        )
    scenes = sorted(found.values(), key=lambda s: (s.number, s.name))
    _refuse_numbers_written_twice(person_dir, scenes)
    missing = [
        str(person_dir / f"{scene.name}_{suffix}")
        for scene in scenes
        for suffix in SCENE_SUFFIXES
        if suffix not in scene.paths
    ]
    if missing:
        raise DataError("missing companion files: " + ", ".join(missing))
    if len(scenes) < MIN_SCENES:
        raise DataError(
            f"{person_dir}: has {len(scenes)} scenes, needs at least {MIN_SCENES} "
            f"({VAL_SCENES} val + {TEST_SCENES} test + at least 1 train)"
        )
    return scenes


def _refuse_numbers_written_twice(person_dir: Path, scenes: list[SceneFiles]) -> None:
    names_of: dict[int, list[str]] = {}
    for scene in scenes:
        names_of.setdefault(scene.number, []).append(scene.name)
    clashes = [
        f"{' and '.join(names)} are one scene, number {number}"
        for number, names in names_of.items()
        if len(names) > 1
    ]
    if clashes:
        raise DataError(
            f"{person_dir}: one scene number written two ways ({'; '.join(clashes)}): a duplicate would "
            "put the same recording into two splits; keep one name per scene"
        )


def check_distinct_scenes(
    scenes: list[SceneFiles], checksums: dict[str, str], scene_split: dict[str, str] | None = None
) -> None:
    """Refuse two scenes whose audio or body poses are byte-identical: one recording copied under
    another number would put the same data into two splits (train data in test).

    `checksums` (file name -> sha256) holds the digests validation computed; a file it lacks (a
    scene of another array-job part) is hashed only when its size equals another scene's same file,
    since files of different sizes differ.
    """
    identical: dict[tuple[str, str], list[str]] = {}
    for suffix in COPY_SIGNAL_SUFFIXES:
        by_size: dict[int, list[SceneFiles]] = {}
        for scene in scenes:
            by_size.setdefault(_file_size(scene.paths[suffix]), []).append(scene)
        for same_size in by_size.values():
            if len(same_size) < 2:
                continue
            by_digest: dict[str, list[str]] = {}
            for scene in same_size:
                path = scene.paths[suffix]
                digest = checksums.get(path.name) or _file_digest(path)
                by_digest.setdefault(digest, []).append(scene.name)
            for names in by_digest.values():
                for copy in names[1:]:
                    identical.setdefault((names[0], copy), []).append(suffix)
    if not identical:
        return
    split = scene_split or {}

    def described(name: str) -> str:
        return f"{name} ({split[name]})" if name in split else name

    person_dir = scenes[0].paths[AUDIO_SUFFIX].parent
    lines = [
        f"{described(first)} and {described(copy)} are copies of one recording: "
        + ", ".join(f"{first}_{suffix} and {copy}_{suffix} are byte-identical" for suffix in suffixes)
        for (first, copy), suffixes in identical.items()
    ]
    raise DataError(
        f"{person_dir}: duplicate scenes would put the same recording into two splits; remove the copy:\n  "
        + "\n  ".join(lines)
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err


def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err


def wrap_angles(values: np.ndarray) -> np.ndarray:
    """Angles wrapped into [0, 2 pi) as float32 (computed in float64; float32 rounding up to 2 pi becomes 0)."""
    wrapped = np.mod(values.astype(np.float64), TWO_PI).astype(np.float32)
    wrapped[wrapped >= np.float32(TWO_PI)] = 0.0
    return wrapped


def read_scene(files: SceneFiles, person: str) -> Scene:
    """Read and validate one scene; every problem is a DataError naming the file."""
    raw = {suffix: _read_bytes(path) for suffix, path in files.paths.items()}
    checksums = {files.paths[suffix].name: hashlib.sha256(data).hexdigest() for suffix, data in raw.items()}

    body = _motion_array(raw[BODY_SUFFIX], files.paths[BODY_SUFFIX], POSE_DIM, "pose")
    face = _motion_array(raw[FACE_SUFFIX], files.paths[FACE_SUFFIX], FACE_DIM, "face-code")
    frames = body.shape[0]
    if face.shape[0] != frames:
        raise DataError(
            f"{files.paths[FACE_SUFFIX]}: has {face.shape[0]} frames but "
            f"{files.paths[BODY_SUFFIX].name} has {frames}"
        )
    if frames == 0:
        raise DataError(f"{files.paths[BODY_SUFFIX]}: has no frames")
    face_valid = _face_validity(raw[MISSING_FACE_SUFFIX], files.paths[MISSING_FACE_SUFFIX], frames)
    if not np.isfinite(body).all():
        raise DataError(f"{files.paths[BODY_SUFFIX]}: holds NaN or Inf ({_first_bad(body)})")
    if not np.isfinite(face[face_valid]).all():
        raise DataError(f"{files.paths[FACE_SUFFIX]}: holds NaN or Inf in a frame not listed as missing")
    face[~face_valid] = 0.0
    if person in WRAPPED_POSE_PEOPLE:  # exact id match: never by substring
        body[:, WRAPPED_POSE_CHANNEL] = wrap_angles(body[:, WRAPPED_POSE_CHANNEL])

    audio, subtype = _read_audio(raw[AUDIO_SUFFIX], files.paths[AUDIO_SUFFIX], frames)
    return Scene(files.name, audio, subtype, body, face, face_valid, checksums)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err


def _load_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from err


def _motion_array(data: bytes, path: Path, width: int, what: str) -> np.ndarray:
    """A (T, width) float32 copy of a pose or face-code array."""
    array = _load_npy(data, path)
    if array.ndim != 2 or array.shape[1] != width:
        raise DataError(f"{path}: expected a 2-D (frames, {width}) {what} array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, reported below
        return np.array(array, dtype=np.float32, order="C")


def _first_bad(array: np.ndarray) -> str:
    frame, channel = np.argwhere(~np.isfinite(array))[0]
    return f"first at frame {frame}, channel {channel}"


def _face_validity(data: bytes, path: Path, frames: int) -> np.ndarray:
    indices = _load_npy(data, path).reshape(-1)
    if indices.size and indices.dtype.kind not in "iu":
        raise DataError(f"{path}: missing-face frame indices must be integers, got dtype {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= frames)]
    if bad.size:
        raise DataError(
            f"{path}: {bad.size} missing-face frame indices out of range [0, {frames}) (e.g. {int(bad[0])})"
        )
    valid = np.ones(frames, dtype=bool)
    valid[indices.astype(np.int64)] = False
    return valid


def _read_audio(data: bytes, path: Path, frames: int) -> tuple[np.ndarray, str]:
    """(S, 2) samples in the dtype that holds the file's subtype exactly, and that subtype."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio_file:
            rate, channels, length = audio_file.samplerate, audio_file.channels, audio_file.frames
            subtype = audio_file.subtype
            if rate != SAMPLE_RATE:
                raise DataError(f"{path}: sample rate is {rate} Hz, expected {SAMPLE_RATE} Hz")
            if channels != AUDIO_CHANNELS:
                raise DataError(
                    f"{path}: has {channels} channel(s), expected {AUDIO_CHANNELS} (this person, the partner)"
                )
            expected = SAMPLES_PER_FRAME * frames
            if length != expected:
                raise DataError(
                    f"{path}: audio has {length} samples per channel, expected {expected} "
                    f"= {SAMPLES_PER_FRAME} x {frames} motion frames"
                )
            if subtype not in AUDIO_READ_DTYPES:
                raise DataError(
                    f"{path}: unsupported audio subtype {subtype} (use one of {sorted(AUDIO_READ_DTYPES)})"
                )
            samples = audio_file.read(dtype=AUDIO_READ_DTYPES[subtype], always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise DataError(f"{path}: not a readable audio file ({err})") from err
    if samples.shape[0] != expected:
        raise DataError(f"{path}: truncated audio, read {samples.shape[0]} of {expected} samples per channel")
    if samples.dtype.kind == "f" and not np.isfinite(samples).all():
        raise DataError(f"{path}: audio holds NaN or Inf")
    return samples, subtype
