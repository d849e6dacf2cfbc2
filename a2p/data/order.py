"""The global training order: which window, crop and random draws each sample of a run gets.

A run's training samples form one endless sequence of *draws* g = 0, 1, 2, ... Epoch e holds
draws [e M, (e + 1) M), M = round(windows x crops_per_window): a permutation of the split's
windows (repeated when more than one crop per window is asked for) that is a pure function of
(seed, e). Every random choice of a draw (its crop, and the seed a task draws its diffusion
timestep, noise and condition dropout from) comes from a generator seeded by (seed, e, index of
the draw in its epoch), never from a rank's stream. So the samples a run sees do not depend on
how many ranks or workers read them.

How ranks read the sequence (`RankSlice`): micro-batch k of the run takes draws
[k W b, (k + 1) W b) (W ranks, b samples per rank), rank r rows [r b, (r + 1) b) of it. An
optimizer step of A accumulated micro-batches then sees draws [s G, (s + 1) G), G = W b A: the
same global batch for every (W, b, A) with the same G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_SEED_MASK = (1 << 63) - 1
_ORDER_TAG = 0x0D0E5
"""Separates the epoch permutation's seed from the draws' own seeds."""
_CROP_TAG = 0xC0B
_TASK_TAG = 0x7A5C


@dataclass(frozen=True)
class Draw:
    """One training sample of the global order."""

    index: int
    """Global draw number g."""
    epoch: int
    """g // M."""
    position: int
    """g % M: the draw's place in its epoch."""
    window: int
    """Index of the window in the split (its shards in manifest order, samples in tar order)."""

    def crop_rng(self, seed: int) -> np.random.Generator:
        """The generator of this draw's crop (start and length)."""
        return np.random.default_rng([seed & _SEED_MASK, self.epoch, self.position, _CROP_TAG])

    def task_seed(self, seed: int) -> int:
        """A 63-bit seed for the task's per-sample draws (timestep, noise, condition dropout)."""
        sequence = np.random.SeedSequence([seed & _SEED_MASK, self.epoch, self.position, _TASK_TAG])
        return int(sequence.generate_state(1, np.uint64)[0]) & _SEED_MASK


@dataclass
class GlobalOrder:
    """The draws of a run over a split of `windows` windows (see the module doc)."""

    windows: int
    seed: int
    crops_per_window: float = 1.0
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"a global order needs at least one window, got {self.windows}")
        if not self.crops_per_window > 0:
            raise ValueError(f"crops_per_window must be positive, got {self.crops_per_window}")

    @property
    def epoch_draws(self) -> int:
        """M: draws per epoch."""
        return max(1, round(self.windows * self.crops_per_window))

    def permutation(self, epoch: int) -> np.ndarray:
        """Windows of epoch `epoch`'s draws (M,), in order: a pure function of (seed, epoch)."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.seed & _SEED_MASK, epoch, _ORDER_TAG])
            rounds = math.ceil(self.epoch_draws / self.windows)
            order = np.concatenate([rng.permutation(self.windows) for _ in range(rounds)])
            if len(self._cache) >= 2:  # a reader needs at most this epoch and the next
                self._cache.pop(min(self._cache))
            self._cache[epoch] = order[: self.epoch_draws]
        return self._cache[epoch]

    def draw(self, index: int) -> Draw:
        """Draw number `index` of the run."""
        if index < 0:
            raise ValueError(f"draw indices start at 0, got {index}")
        epoch, position = divmod(index, self.epoch_draws)
        return Draw(index, epoch, position, int(self.permutation(epoch)[position]))


@dataclass(frozen=True)
class RankSlice:
    """Which draws one rank's micro-batches hold."""

    rank: int
    world_size: int
    batch_size: int
    """b: samples per rank per micro-batch."""

    @property
    def global_micro_batch(self) -> int:
        """W b: draws per micro-batch of all ranks together."""
        return self.world_size * self.batch_size

    def draws(self, micro_batch: int) -> range:
        """The draws of this rank's rows of micro-batch `micro_batch` of the run."""
        first = micro_batch * self.global_micro_batch + self.rank * self.batch_size
        return range(first, first + self.batch_size)
