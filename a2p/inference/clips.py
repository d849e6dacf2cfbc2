"""The clips a job samples: audio files (named, in folders, or listed in .txt files) or the chunks
of a shard set's split; each with its name, where it came from, and a seed derived from its name.

A clip's name names its outputs (`NAME.npz`, `.parts/NAME/`, `reference/NAME/`), so every clip's
name must be a plain file name (`a2p.fileio.plain_name`): one from a crafted shard key or an odd
audio path is refused, never followed outside the output folder."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from a2p.constants import AUDIO_CHANNELS, KEYFRAME_INTERVAL, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.data.chunks import EVAL_CHUNK_FRAMES, iter_split_chunks
from a2p.errors import A2PError, DataError
from a2p.fileio import plain_name

AUDIO_SUFFIXES = (".wav", ".flac")


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """(S, 2) float32 audio at 48 kHz whose length is whole frames, and warnings about fixes made."""
    warnings = []
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"{path}: cannot read audio ({err})") from err
    if audio.shape[1] == 1:
        audio = np.concatenate([audio, np.zeros_like(audio)], axis=1)
        warnings.append("mono audio: the partner channel is silent")
    elif audio.shape[1] != AUDIO_CHANNELS:
        raise DataError(f"{path}: {audio.shape[1]} channels; expected 2 (this person, then the partner) or 1")
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: audio holds NaN or Inf")
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio.T.copy()), rate, SAMPLE_RATE).T.numpy()
        warnings.append(f"resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    if frames < KEYFRAME_INTERVAL:
        raise DataError(f"{path}: {audio.shape[0] / SAMPLE_RATE:.2f} s of audio is shorter than one second")
    return np.ascontiguousarray(audio[: frames * SAMPLES_PER_FRAME]), warnings


def clip_seed(seed: int, name: str) -> int:
    """A seed that depends only on the run's seed and the clip's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


@dataclass(frozen=True)
class Clip:
    """One clip to sample: its output name, where it came from, and how to read its audio."""

    name: str
    source: str
    read: Callable[[], tuple[np.ndarray, list[str]]]

    def __post_init__(self) -> None:
        plain_name(self.name, f"{self.source}: clip name", DataError, "outputs are named by clip")


def file_clips(inputs: list[str]) -> list[Clip]:
    """Audio files named directly, found in directories, or listed one per line in .txt files."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.suffix == ".txt":
            paths += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
        else:
            paths.append(path)
    names = [path.stem for path in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise A2PError(f"several clips share the name(s) {duplicates}: outputs are named by clip")
    return [Clip(path.stem, str(path), partial(read_audio, path)) for path in paths]


def split_clips(shard_dir: str | Path, split: str = "test", chunk: int = EVAL_CHUNK_FRAMES) -> Iterator[Clip]:
    """The `chunk`-frame chunks of a shard set's split, in order, each frame of a scene at most once.

    Shards hold overlapping windows of every scene; a chunk is kept when it is whole and starts at
    or after the end of the scene's last kept chunk. Names are `{scene}_{first frame:06d}`. The
    ground truth of the same chunks comes from the same `iter_split_chunks`.
    """
    for name, _first, batch in iter_split_chunks(shard_dir, split, chunk, audio=True):
        key = str(batch["key"][0])  # the sample's, which `name` is cut from
        try:
            plain_name(key, "sample key", DataError, KEY_ADVICE)
        except DataError as err:
            raise DataError(f"{_shard_holding(shard_dir, split, key)}: {err}") from None
        audio = batch["audio"][0].numpy()
        yield Clip(name, f"{shard_dir}:{split}:{name}", lambda audio=audio: (audio, []))


KEY_ADVICE = (
    "clips are named by their sample's key, so its outputs would not stay inside the output folder: "
    "a crafted or damaged shard? Rebuild the shards with `a2p data build`"
)


def _shard_holding(shard_dir: str | Path, split: str, key: str) -> str:
    """The local shard of `split` that holds sample `key`, to name in an error; else the shard set and split."""
    from a2p.data.format import load_manifest
    from a2p.data.remote import is_remote

    if not is_remote(shard_dir):
        for path in load_manifest(shard_dir).shard_paths(shard_dir, split):
            try:
                with tarfile.open(path, mode="r:") as tar:
                    if any(member.startswith(f"{key}.") for member in tar.getnames()):
                        return str(path)
            except (OSError, tarfile.TarError):
                continue
    return f"{shard_dir} (split {split!r})"
