"""Evaluation batches, in order, every frame once: `build_eval_loader`.

Every window of the split, in manifest order, is cut into consecutive 600-frame chunks (the last one shorter, padded and masked), so every frame of every
window appears exactly once; chunk `g` goes to rank `g % R`, and a rank's chunks are batched in
order. Ranks are padded with empty chunks (`key` "", all masks False) to the same number of
batches, so a collective per batch cannot hang. No randomness.

Batch keys and shapes are documented in `a2p.data.crops`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from a2p.constants import CROP_MAX_FRAMES
from a2p.data.crops import Batch, allocate, eval_crops, fill, take
from a2p.data.decode import iter_shard, sample_frames
from a2p.data.format import Units
from a2p.data.shards import ShardSet, crop_spec, iterate, resolve_ranks, worker_init


class EvalStream(IterableDataset):
    """Deterministic, in-order evaluation batches of one rank (see the module doc)."""

    def __init__(
        self,
        shard_dir: str | Path,
        batch_size: int,
        *,
        split: str = "val",
        rank: int | None = None,
        world_size: int | None = None,
        crop_frames: int = CROP_MAX_FRAMES,
        audio: bool = True,
        features: bool = True,
        normalize: bool = True,
        units: Units = "train",
        pad_ranks: bool = True,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = ShardSet(shard_dir, split, normalize, units)
        self.batch_size = batch_size
        self.rank, self.world_size = resolve_ranks(rank, world_size)
        self.spec = crop_spec(self.data.manifest, crop_frames, crop_frames, audio, features)
        self.pad_ranks = pad_ranks

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch_index, batch, rows = -1, None, 0

        def row_for(local: int) -> Iterator[Batch]:
            """Point (batch, rows) at rank-local chunk `local`'s row, yielding the batch it completes."""
            nonlocal batch_index, batch, rows
            if local // self.batch_size != batch_index:
                if batch is not None:
                    yield take(batch, rows)
                batch_index, rows = local // self.batch_size, 0
                batch = allocate(self.spec, self.batch_size, self.data.feature_dim, info is not None)

        chunks = 0  # chunks of the whole split seen so far
        mine = 0  # of which this rank's
        for path, samples, size in self.data.shards:
            for sample in iter_shard(self.data.local(path), samples, size):
                for start, length in eval_crops(sample_frames(sample), self.spec):
                    g, chunks = chunks, chunks + 1
                    if g % self.world_size != self.rank:
                        continue
                    local, mine = mine, mine + 1
                    if (local // self.batch_size) % workers != worker:
                        continue
                    yield from row_for(local)
                    fill(
                        batch, rows, sample, start, length, self.spec, self.data.stats, split=self.data.split
                    )
                    rows += 1
        total = -(-chunks // self.world_size) if self.pad_ranks else mine
        for local in range(mine, total):  # empty rows: zeros, every mask False, key ""
            if (local // self.batch_size) % workers == worker:
                yield from row_for(local)
                rows += 1
        if batch is not None:
            yield take(batch, rows)


class EvalLoader:
    """Iterable over one rank's evaluation batches (a new pass each time); `dataset` is its `EvalStream`."""

    def __init__(self, dataset: EvalStream, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            worker_init_fn=worker_init if num_workers else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        return iterate(self.loader)


def build_eval_loader(
    shard_dir: str | Path,
    batch_size: int,
    *,
    split: str = "val",
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    crop_frames: int = CROP_MAX_FRAMES,
    audio: bool = True,
    features: bool = True,
    normalize: bool = True,
    units: Units = "train",
    pad_ranks: bool = True,
) -> EvalLoader:
    """This rank's evaluation loader: every window of `split` in order, in `crop_frames` chunks.

    With workers, each worker reads every shard (cheap headers) and decodes only its own batches.
    """
    dataset = EvalStream(
        shard_dir,
        batch_size,
        split=split,
        rank=rank,
        world_size=world_size,
        crop_frames=crop_frames,
        audio=audio,
        features=features,
        normalize=normalize,
        units=units,
        pad_ranks=pad_ranks,
    )
    return EvalLoader(dataset, num_workers)
