"""The streaming loader: WebDataset shards -> shuffled, cropped, normalized batches, resumable.

Training (`build_train_loader`): every epoch the split's shards are permuted from (seed, epoch),
identically on every rank, and dealt to the R x K streams (R ranks, K DataLoader workers; stream
`s = rank * K + k` takes permuted shards s, s + R K, s + 2 R K, ...), so streams read disjoint
shards. A stream reads its shards `open_shards` at a time (each sample from a random open one)
through a seeded shuffle buffer; when it runs out before the epoch ends it starts another pass
(shards reshuffled, the buffer drained in between, so no sample repeats within a pass). It draws
a crop per sample and batches inside the worker. Every rank delivers exactly `batches_per_epoch`
batches, so no rank runs out before the others; by default ceil(samples x `crops_per_window` /
(R x batch size)) from the manifest, so an epoch draws about `crops_per_window` crops per window.
Each stream is a pure function of (seed, epoch, rank, R, K, stream); `a2p.data.state` explains
how the DataLoader's round-robin over workers is kept in step with a position, which makes resume
exact and cheap (skipped samples are read and shuffled, never decoded).

Evaluation batches: `a2p.data.eval_loader`. Batch keys and shapes are documented in `a2p.data.crops`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from a2p.constants import CROP_MAX_FRAMES, CROP_MIN_FRAMES
from a2p.data.crops import Batch, allocate, draw_crop, fill
from a2p.data.decode import RawSample, iter_shard, sample_frames
from a2p.data.format import Units
from a2p.data.shards import ShardSet, crop_spec, iterate, resolve_ranks, worker_init
from a2p.data.state import (
    LoaderPosition,
    check_layout,
    make_state,
    position_from_state,
    worker_plan,
)
from a2p.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 16
"""Raw samples a training stream holds for shuffling (a 40 s window is a few MB of compressed bytes)."""
DEFAULT_OPEN_SHARDS = 4
"""Shards a training stream reads at once, drawing each sample from a random one (shards hold
consecutive windows of few scenes; drawing from several mixes scenes without holding more samples)."""

_SEED_MASK = (1 << 63) - 1
_SHARD_ORDER_TAG = 0x5EED5
"""Separates the shared shard permutation's seed from the per-stream seeds."""


def interleave(
    sources: list[Iterator[RawSample]], width: int, rng: np.random.Generator
) -> Iterator[RawSample]:
    """Samples of `width` sources at a time, each next one from a random open source; a source that
    ends is replaced by the next unopened one. Mixes scenes across shards at no memory cost."""
    pending = list(reversed(sources))
    open_: list[Iterator[RawSample]] = [pending.pop() for _ in range(min(width, len(pending)))]
    while open_:
        index = int(rng.integers(len(open_))) if len(open_) > 1 else 0
        sample = next(open_[index], None)
        if sample is None:
            if pending:
                open_[index] = pending.pop()
            else:
                open_.pop(index)
            continue
        yield sample


def shuffle_samples(samples: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """A seeded shuffle buffer: once `size` samples are held, each new one replaces a random one that leaves."""
    if size <= 1:
        yield from samples
        return
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = sample
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


class TrainStream(IterableDataset):
    """One rank's training batches for one epoch, split over DataLoader workers (see the module doc).

    Use it through `TrainLoader` (`build_train_loader`), which owns the position. Iterated in the
    main process, it interleaves its K streams round-robin itself, giving exactly the batches a
    DataLoader with K workers gives.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        batch_size: int,
        *,
        split: str = "train",
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        batches_per_epoch: int | None = None,
        crops_per_window: float = 1.0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        open_shards: int = DEFAULT_OPEN_SHARDS,
        crop_frames: int = CROP_MAX_FRAMES,
        min_frames: int = CROP_MIN_FRAMES,
        audio: bool = True,
        features: bool = True,
        normalize: bool = True,
        units: Units = "train",
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = ShardSet(shard_dir, split, normalize, units)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank, self.world_size = resolve_ranks(rank, world_size)
        self.num_workers = int(num_workers)
        self.num_streams = max(1, self.num_workers)
        self.shuffle_buffer = int(shuffle_buffer)
        self.open_shards = max(1, int(open_shards))
        self.spec = crop_spec(self.data.manifest, crop_frames, min_frames, audio, features)
        total_streams = self.world_size * self.num_streams
        if len(self.data.shards) < total_streams:
            raise DataError(
                f"{self.data.shard_dir}: split {split!r} has {len(self.data.shards)} shard(s), fewer than ranks x "
                f"workers = {self.world_size} x {self.num_streams} = {total_streams}; every (rank, worker) stream "
                "needs a shard of its own: build more, smaller shards or use fewer workers"
            )
        if crops_per_window <= 0:
            raise ValueError(f"crops_per_window must be positive, got {crops_per_window}")
        default = math.ceil(self.data.samples * crops_per_window / (self.world_size * batch_size))
        self.batches_per_epoch = int(batches_per_epoch or default)
        if self.batches_per_epoch <= 0:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.position = LoaderPosition()

    @property
    def layout(self) -> dict[str, Any]:
        """What, besides the position, the stream depends on."""
        return {
            "split": self.data.split,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
            "shuffle_buffer": self.shuffle_buffer,
            "open_shards": self.open_shards,
        }

    def set_position(self, position: LoaderPosition) -> None:
        """Start the next iteration at `position` (read by workers when they start)."""
        self.position = position.normalized(self.batches_per_epoch)

    def stream_shards(self, epoch: int, stream: int) -> list[tuple[str, int, int]]:
        """(path, samples, bytes) of the shards logical stream `stream` of this rank reads in `epoch`."""
        rng = np.random.default_rng([self.seed & _SEED_MASK, epoch, _SHARD_ORDER_TAG])
        order = rng.permutation(len(self.data.shards))
        first = self.rank * self.num_streams + stream
        return [self.data.shards[i] for i in order[first :: self.world_size * self.num_streams]]

    def _rngs(self, epoch: int, stream: int) -> list[np.random.Generator]:
        entropy = [self.seed & _SEED_MASK, epoch, self.rank, self.world_size, self.num_streams, stream]
        return [np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(3)]

    def _samples(self, epoch: int, stream: int) -> Iterator[RawSample]:
        """The stream's endless raw samples: passes over its shards, each pass shuffled on its own.

        The first pass reads the shards in the epoch's order, later ones in a reshuffled order; the
        shuffle buffer is drained at the end of every pass, so a stream repeats no sample before it
        has given all of them.
        """
        pass_rng, shuffle_rng, _ = self._rngs(epoch, stream)
        order = self.stream_shards(epoch, stream)

        def one_pass(shards: list[tuple[str, int, int]]) -> Iterator[RawSample]:
            return interleave([iter_shard(*shard) for shard in shards], self.open_shards, shuffle_rng)

        while True:
            produced = 0
            for sample in shuffle_samples(one_pass(order), self.shuffle_buffer, shuffle_rng):
                produced += 1
                yield sample
            if produced == 0:
                raise DataError(f"{self.data.shard_dir}: shards {[p for p, _, _ in order]} hold no samples")
            order = [order[i] for i in pass_rng.permutation(len(order))]

    def _batches(self, epoch: int, stream: int, skip: int, count: int) -> Iterator[Batch]:
        """Batches `skip .. skip + count - 1` of logical stream `stream` in `epoch`."""
        if count <= 0:
            return
        samples = self._samples(epoch, stream)
        crop_rng = self._rngs(epoch, stream)[2]
        for _ in range(skip * self.batch_size):  # the same draws as an uninterrupted run, nothing decoded
            draw_crop(crop_rng, sample_frames(next(samples)), self.spec)
        if skip:
            logger.debug(
                "epoch %d stream %d: skipped %d samples to resume", epoch, stream, skip * self.batch_size
            )
        shared = get_worker_info() is not None
        for _ in range(count):
            batch = allocate(self.spec, self.batch_size, self.data.feature_dim, shared)
            for row in range(self.batch_size):
                sample = next(samples)
                start, length = draw_crop(crop_rng, sample_frames(sample), self.spec)
                fill(batch, row, sample, start, length, self.spec, self.data.stats)
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        position = self.position
        info = get_worker_info()
        if info is not None:
            if info.num_workers != self.num_streams:
                raise DataError(
                    f"TrainStream was built for {self.num_workers} workers but runs in {info.num_workers}"
                )
            plan = worker_plan(position.batch, self.batches_per_epoch, self.num_streams, info.id)
            yield from self._batches(position.epoch, plan.stream, plan.skip, plan.count)
            return
        # Main process: the DataLoader's round-robin over K workers, done here.
        streams = []
        for worker in range(self.num_streams):
            plan = worker_plan(position.batch, self.batches_per_epoch, self.num_streams, worker)
            streams.append(self._batches(position.epoch, plan.stream, plan.skip, plan.count))
        while streams:
            for stream in list(streams):
                batch = next(stream, None)
                if batch is None:
                    streams.remove(stream)
                else:
                    yield batch


class TrainLoader:
    """A rank's resumable training stream: iterating yields the rest of the current epoch.

    `state_dict()` between two batches is the position of the next batch (epoch, batches consumed
    this epoch) plus the layout it is valid for; `load_state_dict()` makes the next `iter()`
    continue exactly there. An epoch that has been consumed moves the next `iter()` to the next
    epoch. Workers start with each iteration (their plan depends on the position), so an epoch
    pays one start-up. Not meant for `accelerator.prepare`: it splits the data by rank itself.
    """

    def __init__(
        self,
        dataset: TrainStream,
        *,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        multiprocessing_context: Any = None,
    ) -> None:
        self.dataset = dataset
        self.position = LoaderPosition()
        workers = dataset.num_workers
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if workers else None,
            multiprocessing_context=multiprocessing_context if workers else None,
        )

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self.dataset.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.position.normalized(len(self)).epoch

    def set_epoch(self, epoch: int) -> None:
        """Continue from the start of `epoch`."""
        self.position = LoaderPosition(int(epoch), 0)

    def __iter__(self) -> Iterator[Batch]:
        self.position = self.position.normalized(len(self))
        self.dataset.set_position(self.position)
        epoch = self.position.epoch
        for batch in iterate(self.loader):
            self.position = LoaderPosition(epoch, self.position.batch + 1)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batch"}` of the next batch plus the layout (seed, ranks, workers, sizes); JSON-able."""
        return make_state(self.position.normalized(len(self)), **self.dataset.layout)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; a different layout continues, but not the same stream."""
        changed = check_layout(state, self.dataset.layout)
        if changed:
            logger.warning(
                "loader state was saved with another layout (%s): resuming at its epoch and batch, "
                "but the batches will differ from an uninterrupted run",
                ", ".join(changed),
            )
        self.position = position_from_state(state).normalized(len(self))

    def load_resharded_state(self, states: list[dict[str, Any]]) -> None:
        """Continue from the positions of a run with another number of ranks, at the same fraction of its epoch."""
        positions = {(int(s["epoch"]), int(s["batch"])) for s in states}
        if len(positions) != 1:
            raise DataError(
                f"loader states of the saved ranks disagree on the position ({sorted(positions)})"
            )
        epoch, batch = positions.pop()
        saved_len = int(states[0].get("batches_per_epoch") or len(self))
        self.position = LoaderPosition(epoch, min(len(self), round(batch * len(self) / saved_len)))


def build_train_loader(
    shard_dir: str | Path,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    split: str = "train",
    batches_per_epoch: int | None = None,
    crops_per_window: float = 1.0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    open_shards: int = DEFAULT_OPEN_SHARDS,
    crop_frames: int = CROP_MAX_FRAMES,
    min_frames: int = CROP_MIN_FRAMES,
    audio: bool = True,
    features: bool = True,
    normalize: bool = True,
    units: Units = "train",
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> TrainLoader:
    """This rank's resumable training loader over the shards of one person (`shard_dir`).

    `rank`/`world_size` default to `a2p.distributed.rank_info()`. An epoch is `batches_per_epoch`
    batches, by default ceil(train windows x `crops_per_window` / (world_size x batch_size)).
    `audio=False` skips decoding the waveform (when the model reads precomputed `features`);
    `normalize=False` keeps raw values; `units` picks the stats (`a2p.data.format.Units`).
    Workers start with each epoch (their share of the epoch depends on the position), so there
    is no `persistent_workers`.
    """
    dataset = TrainStream(
        shard_dir,
        batch_size,
        split=split,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        batches_per_epoch=batches_per_epoch,
        crops_per_window=crops_per_window,
        shuffle_buffer=shuffle_buffer,
        open_shards=open_shards,
        crop_frames=crop_frames,
        min_frames=min_frames,
        audio=audio,
        features=features,
        normalize=normalize,
        units=units,
    )
    return TrainLoader(dataset, pin_memory=pin_memory, prefetch_factor=prefetch_factor)
