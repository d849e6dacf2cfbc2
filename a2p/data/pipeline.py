"""The training loader: a global sample order over the shards, read at random, resumable on any world size.

Training (`build_train_loader`): the run's samples are one endless sequence of draws in a
global order (`a2p.data.order`): epoch e is a permutation of the split's windows that is a pure
function of (seed, e), each draw's crop and task randomness come from (seed, e, draw), and
micro-batch k of the run holds draws [k W b, (k + 1) W b), rank r rows [r b, (r + 1) b) of it.
So which samples a step sees depends on the global batch only, not on the number of ranks or
workers, and any number of ranks x workers reads any number of shards. Windows are read at
random through wids (`a2p.data.indexed`), each worker keeping at most `open_shards` shards open.
A rank's loader epoch is `batches_per_epoch` micro-batches (by default enough for the order's
epoch: ceil(windows x `crops_per_window` / (W b))); loader epochs do not have to line up with the
order's, since the sequence is continuous. Batch j of a loader epoch is made by worker j % K
(the DataLoader's round-robin); a position is (epoch, batch), and the draws consumed, which is
what a run resumed on another world size continues from.

Evaluation batches: `a2p.data.eval_loader`. Batch keys and shapes are documented in `a2p.data.crops`;
training batches add `draw` (B,) (the global draw number) and `sample_seed` (B,) (the seed of
the draw's task randomness, `Draw.task_seed`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from a2p.constants import CROP_MAX_FRAMES, CROP_MIN_FRAMES
from a2p.data.crops import Batch, allocate, draw_crop, fill
from a2p.data.decode import sample_frames
from a2p.data.format import Units
from a2p.data.indexed import IndexedSplit
from a2p.data.order import GlobalOrder, RankSlice
from a2p.data.shards import ShardSet, crop_spec, iterate, resolve_ranks, worker_init
from a2p.data.state import LoaderPosition, check_layout, make_state, position_from_state
from a2p.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_OPEN_SHARDS = 4
"""Shards a reader keeps open at once (wids' LRU): memory stays flat in the dataset's size."""
ORDER_VERSION = 2
"""The sampling scheme a saved position belongs to (2: the global order)."""


class TrainStream(IterableDataset):
    """One rank's training batches for one loader epoch, split over DataLoader workers (see the module doc).

    Use it through `TrainLoader` (`build_train_loader`), which owns the position. Iterated in the
    main process, it makes the batches a DataLoader with K workers gives, in the same order.
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
        self.spec = crop_spec(self.data.manifest, crop_frames, min_frames, audio, features)
        self.order = GlobalOrder(self.data.samples, self.seed, crops_per_window)
        self.slice = RankSlice(self.rank, self.world_size, batch_size)
        default = math.ceil(self.order.epoch_draws / self.slice.global_micro_batch)
        self.batches_per_epoch = int(batches_per_epoch or default)
        if self.batches_per_epoch <= 0:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.reader = IndexedSplit(self.data.shard_dir, split, self.data.shards, open_shards, self.data.cache)
        self.position = LoaderPosition()

    @property
    def layout(self) -> dict[str, Any]:
        """What, besides the position, the batches depend on (workers are not part of it)."""
        return {
            "order": ORDER_VERSION,
            "split": self.data.split,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
            "crops_per_window": self.order.crops_per_window,
        }

    def set_position(self, position: LoaderPosition) -> None:
        """Start the next iteration at `position` (read by workers when they start)."""
        self.position = position.normalized(self.batches_per_epoch)

    def micro_batch(self, position: LoaderPosition) -> int:
        """The run's micro-batch number k of a position of this loader."""
        return position.epoch * self.batches_per_epoch + position.batch

    def draws_before(self, position: LoaderPosition) -> int:
        """Draws of all ranks consumed before `position`."""
        return self.micro_batch(position) * self.slice.global_micro_batch

    def make_batch(self, micro_batch: int) -> Batch:
        """This rank's rows of the run's micro-batch `micro_batch`."""
        shared = get_worker_info() is not None
        batch = allocate(self.spec, self.batch_size, self.data.feature_dim, shared)
        batch["draw"] = torch.zeros(self.batch_size, dtype=torch.int64)
        batch["sample_seed"] = torch.zeros(self.batch_size, dtype=torch.int64)
        batch["shard"] = [""] * self.batch_size
        for row, index in enumerate(self.slice.draws(micro_batch)):
            draw = self.order.draw(index)
            sample = self.reader[draw.window]
            start, length = draw_crop(draw.crop_rng(self.seed), sample_frames(sample), self.spec)
            fill(batch, row, sample, start, length, self.spec, self.data.stats, split=self.data.split)
            batch["draw"][row] = index
            batch["shard"][row] = str(sample.get("__url__", ""))
            batch["sample_seed"][row] = draw.task_seed(self.seed)
        return batch

    def __iter__(self) -> Iterator[Batch]:
        position = self.position
        info = get_worker_info()
        if info is not None and info.num_workers != self.num_streams:
            raise DataError(
                f"TrainStream was built for {self.num_workers} workers but runs in {info.num_workers}"
            )
        workers = [info.id] if info is not None else range(self.num_streams)
        base = position.epoch * self.batches_per_epoch
        # Worker w makes batches b + w, b + w + K, ...: the DataLoader's round-robin gives them in order.
        for batch in range(position.batch, self.batches_per_epoch):
            if (batch - position.batch) % self.num_streams in workers:
                yield self.make_batch(base + batch)


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
        """`{"epoch", "batch"}` of the next batch, the `draws` of all ranks consumed before it, and
        the layout (seed, ranks, sizes, order version); JSON-able."""
        position = self.position.normalized(len(self))
        return make_state(position, draws=self.dataset.draws_before(position), **self.dataset.layout)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position: exactly, or from its draws when the ranks or sizes changed."""
        changed = check_layout(state, self.dataset.layout)
        if not changed:
            self.position = position_from_state(state).normalized(len(self))
            return
        self.load_resharded_state([state])

    def load_resharded_state(self, states: list[dict[str, Any]]) -> None:
        """Continue from the saved ranks' states of a run with another number of ranks (or sizes).

        The global order does not depend on them: the run continues at the draw it stopped at,
        exactly when that draw starts one of this layout's micro-batches (the same global batch
        at a step boundary), at the micro-batch before it otherwise, with a warning.
        """
        draws = {int(s["draws"]) for s in states if "draws" in s}
        same_order = all(
            s.get(name) == self.dataset.layout[name] for s in states for name in ("order", "seed", "split")
        )
        if len(draws) != 1 or not same_order:
            self._restart_from(states)
            return
        consumed = draws.pop()
        per_micro_batch = self.dataset.slice.global_micro_batch
        micro_batch, rest = divmod(consumed, per_micro_batch)
        if rest:
            logger.warning(
                "the saved run stopped after %d draws, not a multiple of this run's %d per micro-batch "
                "(ranks x batch size): continuing at draw %d, so %d samples are seen again",
                consumed, per_micro_batch, micro_batch * per_micro_batch, rest,
            )  # fmt: skip
        self.position = LoaderPosition(*divmod(micro_batch, len(self)))

    def _restart_from(self, states: list[dict[str, Any]]) -> None:
        """A saved state of another sampling scheme or seed: keep its epoch, say that the batches differ."""
        epochs = {int(s.get("epoch", 0)) for s in states}
        logger.warning(
            "loader state was saved with another sample order (%s): continuing from the start of "
            "epoch %d; the batches will differ from an uninterrupted run",
            ", ".join(check_layout(states[0], self.dataset.layout)) or "no draw count",
            min(epochs),
        )
        self.position = LoaderPosition(min(epochs), 0)


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
    batches, by default ceil(train windows x `crops_per_window` / (world_size x batch_size));
    `batch_size` is this rank's, so world_size x batch_size is the global micro-batch.
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
        open_shards=open_shards,
        crop_frames=crop_frames,
        min_frames=min_frames,
        audio=audio,
        features=features,
        normalize=normalize,
        units=units,
    )
    return TrainLoader(dataset, pin_memory=pin_memory, prefetch_factor=prefetch_factor)
