"""The shard format: what `a2p data build` writes and what the loader reads.

One folder per person holds `{split}-{index:06d}.tar` WebDataset shards and a `manifest.json`.
A sample is one window of one scene (default 40 s, hop 20 s, so every training crop of at most
600 frames lies inside one window). Its files, under the key `{scene}_{start:06d}`:

| file              | content                                                          |
|-------------------|------------------------------------------------------------------|
| `audio.flac`      | the window's audio, 48 kHz, 2 channels, lossless: FLAC for 16/24-bit PCM |
| `audio.wav`       | ... or WAV in the recording's own subtype when FLAC cannot hold it (float) |
| `body.npy`        | (T, 104) float32 joint angles (capture 1/2 channel 3 wrapped)    |
| `face.npy`        | (T, 256) float32 face codes (missing frames hold zeros)          |
| `face_valid.npy`  | (T,) bool, False where the face code is missing                  |
| `features.npy`    | optional (T * 100 / 30, D) float16 frozen audio features         |
| `meta.json`       | person, scene, start frame, frames, scene frames, split          |

The audio of a window holds exactly `SAMPLES_PER_FRAME * T` samples per channel.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2p.config.train import Units
from a2p.constants import FACE_DIM, FPS, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME, SPLITS
from a2p.errors import DataError
from a2p.fileio import not_plain

FORMAT_NAME = "a2p-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

AUDIO_KEY = "audio.flac"
AUDIO_WAV_KEY = "audio.wav"
AUDIO_KEYS = (AUDIO_KEY, AUDIO_WAV_KEY)
"""A sample holds exactly one of these."""
BODY_KEY = "body.npy"
FACE_KEY = "face.npy"
FACE_VALID_KEY = "face_valid.npy"
FEATURES_KEY = "features.npy"
META_KEY = "meta.json"
SAMPLE_FILES = (BODY_KEY, FACE_KEY, FACE_VALID_KEY, META_KEY)
"""Files every sample holds besides one of `AUDIO_KEYS`; `FEATURES_KEY` is added with features."""

DEFAULT_WINDOW_FRAMES = 40 * FPS
DEFAULT_HOP_FRAMES = 20 * FPS
DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
"""Shards are closed once they reach this size (well under 1 GB: many shards, not a few)."""

SHARD_PATTERN = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
"""A shard's file name; match it with `fullmatch` (`$` alone lets a trailing newline through)."""


def shard_name(split: str, index: int) -> str:
    """`{split}-{index:06d}.tar`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return f"{split}-{index:06d}.tar"


def sample_key(scene: str, start_frame: int) -> str:
    """The WebDataset key of the window of `scene` that starts at `start_frame`."""
    return f"{scene}_{start_frame:06d}"


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of the windows that cover a scene of `num_frames` frames.

    Windows start every `hop` frames; the last one starts where a window first reaches the end,
    so every frame is covered and every crop of at most `hop` frames fits inside one window.
    """
    if window <= 0 or hop <= 0 or hop > window:
        raise ValueError(f"need 0 < hop <= window, got window={window} hop={hop}")
    starts = [0]
    while starts[-1] + window < num_frames:
        starts.append(starts[-1] + hop)
    return starts


def features_frames(num_frames: int, rate_hz: int) -> int:
    """Number of feature frames at `rate_hz` that cover `num_frames` motion frames."""
    return num_frames * SAMPLES_PER_FRAME // (SAMPLE_RATE // rate_hz)


@dataclass
class ShardInfo:
    """One tar file of a split."""

    name: str
    """File name, `{split}-{index:06d}.tar`."""
    samples: int
    """Number of samples (windows) it holds."""
    frames: int
    """Sum of the windows' frame counts (overlapping windows count twice)."""
    bytes: int = 0
    """Size of the tar file in bytes."""
    sha256: str = ""
    """Checksum of the tar file."""


@dataclass
class SplitInfo:
    """The shards and sizes of one split."""

    shards: list[ShardInfo] = field(default_factory=list)
    """Shards in order."""
    scenes: list[str] = field(default_factory=list)
    """Scenes (in scene order) this split holds."""
    samples: int = 0
    """Total windows."""
    frames: int = 0
    """Distinct frames of the split's scenes (windows' overlaps counted once)."""
    hours: float = 0.0
    """`frames` in hours."""


@dataclass
class Manifest:
    """Everything a reader needs to trust and use a person's shards (`manifest.json`)."""

    person: str
    splits: dict[str, SplitInfo]
    stats: dict[str, list[float]]
    """Normalization stats from the train split: body_mean, body_std, face_mean, face_std (valid frames)."""
    person_stats: dict[str, list[float]] | None = None
    """The recorded folder's `data_stats.pth` when it has one (`a2p.data.person_stats`): body_mean,
    body_std, face_mean, face_std, audio_mean, audio_std_flat, as stored (float64 in the released
    files). The units the reference's checkpoints take and give; `units="person"` reads them."""
    window_frames: int = DEFAULT_WINDOW_FRAMES
    hop_frames: int = DEFAULT_HOP_FRAMES
    features: dict[str, Any] | None = None
    """None, or {name, version, dim, rate_hz, dtype} of the frozen featurizer stored in the shards."""
    sources: dict[str, str] = field(default_factory=dict)
    """Source file name (relative to the person folder) -> sha256."""
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    samples_per_frame: int = SAMPLES_PER_FRAME
    pose_dim: int = POSE_DIM
    face_dim: int = FACE_DIM
    tool_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def shard_paths(self, root: str | Path, split: str) -> list[Path]:
        """Absolute paths of the split's shards, in order."""
        return [Path(root) / s.name for s in self.split(split).shards]

    def units_stats(self, units: Units, source: str = MANIFEST_NAME) -> tuple[str, dict[str, list[float]]]:
        """(`person` or `train`, the stats) that `units` names; `person` without a data_stats.pth is refused."""
        if units not in ("auto", "person", "train"):
            raise DataError(f"normalization units must be auto, person or train, got {units!r}")
        if units == "train" or (units == "auto" and self.person_stats is None):
            return "train", self.stats
        if self.person_stats is None:
            raise DataError(
                f"{source}: built from a folder without data_stats.pth, so it has no person units; rebuild "
                "it from a folder that has the person's data_stats.pth, or use the train split's units "
                "(train.units=train)"
            )
        return "person", self.person_stats

    def split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise DataError(f"manifest of {self.person} has no split {split!r} (has {sorted(self.splits)})")
        return self.splits[split]

    def to_json(self) -> dict[str, Any]:
        from a2p.config.core import to_dict

        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> Manifest:
        try:
            if data.get("format") != FORMAT_NAME:
                raise DataError(f"{source}: not an a2p shard manifest (format={data.get('format')!r})")
            if data.get("format_version") != FORMAT_VERSION:
                raise DataError(
                    f"{source}: manifest format version {data.get('format_version')} "
                    f"is not supported (this a2p reads {FORMAT_VERSION})"
                )
            splits = {
                name: SplitInfo(
                    shards=[ShardInfo(**s) for s in info["shards"]],
                    **{k: v for k, v in info.items() if k != "shards"},
                )
                for name, info in data["splits"].items()
            }
            for name, info in splits.items():
                for shard in info.shards:
                    check_shard_name(shard.name, name, source)
            rest = {k: v for k, v in data.items() if k != "splits"}
            return cls(splits=splits, **rest)
        except (KeyError, TypeError) as err:
            raise DataError(f"{source}: malformed manifest ({err})") from err


def check_shard_name(name: str, split: str, source: str = MANIFEST_NAME) -> None:
    """Refuse a manifest entry that is not the plain file name `{split}-{index:06d}.tar` of a shard of `split`.

    Every reader (the loaders, `a2p data verify`, remote folders) joins the names to the manifest's
    folder, so a path (`../x/train-000000.tar`, `/tmp/x.tar`) would be followed outside it.
    """
    reason = not_plain(name)
    named = SHARD_PATTERN.fullmatch(name) if not reason else None
    if named is None or named.group(1) != split:
        why = reason or f"a shard of split {split!r} is named {split}-NNNNNN.tar"
        raise DataError(
            f"{source}: split {split!r} lists the shard {name!r}, which is not a shard file name in the "
            f"manifest's folder ({why}); a manifest edited by hand or crafted? Rebuild it with `a2p data build`"
        )


def load_manifest(shard_dir: str | Path) -> Manifest:
    """Read `shard_dir/manifest.json` (a local folder, or an `http(s)://` / `pipe:` one:
    `a2p.data.remote`), with a clear error when it is missing or malformed."""
    from a2p.data.remote import fetch, is_remote, member_url

    if is_remote(shard_dir):
        url = member_url(str(shard_dir), MANIFEST_NAME)
        raw = fetch(url)
        assert raw is not None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{url}: manifest is not valid JSON ({err})") from err
        return Manifest.from_json(data, source=url)
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no shard manifest here (build shards with `a2p data build`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: manifest is not valid JSON ({err})") from err
    return Manifest.from_json(data, source=str(path))


def save_manifest(manifest: Manifest, shard_dir: str | Path) -> Path:
    """Write the manifest atomically (temp file, then rename), so readers never see half of one."""
    path = Path(shard_dir) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path


def frames_to_hours(frames: int) -> float:
    return frames / FPS / 3600.0


def check_finite(values: list[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{what}: holds NaN or Inf")
