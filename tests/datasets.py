"""Small synthetic datasets and standard-library shard readers for the data-tool tests."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from a2p.data.format import AUDIO_KEYS, load_manifest
from data_tools.synth import synthesize

SMALL_SCENES = 8
SMALL_SECONDS = 12.0
TINY_SCENES = 7
TINY_SECONDS = 2.0


def make_dataset(
    root: Path,
    person: str = "PXB184",
    scenes: int = SMALL_SCENES,
    seconds: float = SMALL_SECONDS,
    seed: int = 0,
) -> Path:
    """Synthesize one person under `root` and return the person folder."""
    return synthesize(root, [person], scenes, seconds, seed)[0]


def copy_dataset(person_dir: Path, root: Path, name: str | None = None) -> Path:
    """A copy of a person folder under `root` (optionally renamed), to mutate in a test."""
    target = root / (name or person_dir.name)
    shutil.copytree(person_dir, target)
    return target


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {file suffix -> bytes} of one tar, read with the standard library only."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            reader = tar.extractfile(member)
            assert reader is not None, member.name
            samples.setdefault(key, {})[suffix] = reader.read()
    return samples


def decode(files: dict[str, bytes]) -> dict[str, Any]:
    """Decode one sample's files: arrays with numpy, audio with soundfile in its exact integer/float dtype."""
    out: dict[str, Any] = {}
    for suffix, data in files.items():
        if suffix.endswith(".npy"):
            out[suffix] = np.load(io.BytesIO(data), allow_pickle=False)
        elif suffix == "meta.json":
            out[suffix] = json.loads(data)
        elif suffix in AUDIO_KEYS:
            info = sf.info(io.BytesIO(data))
            dtype = (
                "int16"
                if info.subtype in ("PCM_16", "PCM_S8")
                else "int32"
                if "PCM" in info.subtype
                else "float32"
            )
            out["audio"], out["sample_rate"] = sf.read(io.BytesIO(data), dtype=dtype, always_2d=True)
            out["audio_subtype"] = info.subtype
    return out


def read_split_samples(shard_dir: Path) -> dict[str, list[tuple[str, str, dict[str, bytes]]]]:
    """split -> [(shard name, key, files)] in manifest order, read with `tarfile`."""
    manifest = load_manifest(shard_dir)
    out = {}
    for split, info in manifest.splits.items():
        out[split] = [
            (shard.name, key, files)
            for shard in info.shards
            for key, files in read_tar(shard_dir / shard.name).items()
        ]
    return out


def shard_files(shard_dir: Path) -> dict[str, tuple[int, int]]:
    """Shard name -> (inode, mtime_ns), to see whether a rerun rewrote it."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(shard_dir.glob("*.tar"))}
