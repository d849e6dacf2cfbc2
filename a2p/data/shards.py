"""What both loaders share: a split's shards from the manifest, this rank, the crop spec, workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from a2p.data.crops import CropSpec
from a2p.data.decode import NormStats
from a2p.data.format import Manifest, Units, load_manifest
from a2p.data.remote import DEFAULT_CACHE_DIR, DEFAULT_CACHE_GB, ShardCache, is_remote, member_url
from a2p.distributed import rank_info
from a2p.errors import DataError


def worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: one intra-op thread per worker (workers already run in parallel)."""
    torch.set_num_threads(1)


def iterate(loader: DataLoader) -> Iterator[Any]:
    """Iterate a DataLoader, shutting its workers down as soon as the consumer stops or a worker fails.

    Left to garbage collection after a worker's error, PyTorch's iterator waits 5 s per worker
    before it gives up on joining them; shutting down explicitly takes milliseconds.
    """
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()


def resolve_ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) as given, or this process's where None."""
    info = rank_info() if rank is None or world_size is None else None
    rank = info.rank if rank is None and info else rank
    world_size = info.world_size if world_size is None and info else world_size
    assert rank is not None and world_size is not None
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return rank, world_size


def crop_spec(manifest: Manifest, crop_frames: int, min_frames: int, audio: bool, features: bool) -> CropSpec:
    """What a crop of this shard set holds, at its features' rate."""
    rate = int(manifest.features["rate_hz"]) if manifest.features else None
    return CropSpec(
        crop_frames=crop_frames, min_frames=min_frames, audio=audio, features=features, feature_rate_hz=rate
    )


def shard_cache() -> ShardCache:
    """The cache remote shards are copied into: `A2P_SHARD_CACHE` (default ~/.cache/a2p/shards),
    at most `A2P_SHARD_CACHE_GB` gigabytes (default 50)."""
    return ShardCache(
        os.environ.get("A2P_SHARD_CACHE") or DEFAULT_CACHE_DIR,
        float(os.environ.get("A2P_SHARD_CACHE_GB") or DEFAULT_CACHE_GB) * 1e9,
    )


class ShardSet:
    """A split's shards as the manifest lists them, with the stats to normalize them (in `units`)."""

    def __init__(self, shard_dir: str | Path, split: str, normalize: bool, units: Units = "train") -> None:
        self.remote = is_remote(shard_dir)
        self.location = str(shard_dir)
        self.shard_dir = Path(shard_dir)  # local folders only (`location` names either kind)
        self.split = split
        self.manifest = load_manifest(self.location)
        info = self.manifest.split(split)
        self.shards: list[tuple[str, int, int]] = [
            (
                member_url(self.location, s.name) if self.remote else str(self.shard_dir / s.name),
                s.samples,
                s.bytes,
            )
            for s in info.shards
        ]
        self.cache = shard_cache() if self.remote else None
        self.samples = info.samples or sum(s.samples for s in info.shards)
        if not self.shards or self.samples <= 0:
            raise DataError(f"{self.location}: split {split!r} has no samples")
        source = (
            member_url(self.location, "manifest.json")
            if self.remote
            else str(self.shard_dir / "manifest.json")
        )
        self.units, _ = self.manifest.units_stats(units, source)
        self.stats = (
            NormStats.from_manifest(self.manifest, source, units) if normalize else NormStats.identity()
        )
        self.feature_dim = int(self.manifest.features["dim"]) if self.manifest.features else None

    def local(self, path: str) -> str:
        """A local file holding shard `path`: itself, or its copy in the cache for a remote folder."""
        return self.cache(path) if self.cache is not None else path
