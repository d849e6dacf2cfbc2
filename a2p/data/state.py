"""The loader's position and the arithmetic that maps it onto DataLoader workers.

A rank's epoch is `batches_per_epoch` batches numbered 0, 1, 2, ... Batch `i` is made by logical
stream `i % K` (K = number of workers, 1 without workers) as that stream's batch `i // K`; a logical
stream is a pure function of (seed, epoch, rank, world size, K, stream). PyTorch's DataLoader hands
out worker outputs round-robin starting at worker 0, so a loader that starts at batch `b` gives
physical worker `w` the logical stream `(b + w) % K`, skipping that stream's first `(b + w) // K`
batches: worker 0 then delivers batch `b`, worker 1 batch `b + 1`, and so on, exactly the order of
an uninterrupted epoch. Workers with a lower index never make fewer batches than later ones, which
keeps the round-robin order intact to the end of the epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from a2p.errors import DataError


@dataclass
class LoaderPosition:
    """Where a rank's training stream stands: the next batch it delivers is batch `batch` of `epoch`."""

    epoch: int = 0
    """Epoch number (0-based); shard order and every random draw depend on it."""
    batch: int = 0
    """Batches of this epoch already delivered to the consumer."""

    def normalized(self, batches_per_epoch: int) -> LoaderPosition:
        """The same position with a finished epoch written as the start of the next one."""
        if self.batch >= batches_per_epoch:
            return LoaderPosition(
                self.epoch + self.batch // batches_per_epoch, self.batch % batches_per_epoch
            )
        return LoaderPosition(self.epoch, self.batch)


@dataclass(frozen=True)
class WorkerPlan:
    """What one physical worker makes for one epoch, starting from a position."""

    stream: int
    """Logical stream it runs, 0 .. K - 1."""
    skip: int
    """Batches of that stream to pass over (consumed before the position)."""
    count: int
    """Batches it yields."""


def worker_plan(start: int, batches_per_epoch: int, num_streams: int, worker: int) -> WorkerPlan:
    """The plan of physical worker `worker` of `num_streams` when the epoch resumes at batch `start`."""
    if not 0 <= worker < num_streams:
        raise ValueError(f"worker {worker} out of range for {num_streams} streams")
    first = start + worker  # the epoch batch this worker delivers first
    count = max(0, -(-(batches_per_epoch - first) // num_streams))
    return WorkerPlan(stream=first % num_streams, skip=first // num_streams, count=count)


def make_state(position: LoaderPosition, **layout: Any) -> dict[str, Any]:
    """A JSON-able state: the position plus the layout it is valid for (seed, ranks, workers, ...)."""
    return {**asdict(position), **layout}


def check_layout(state: dict[str, Any], layout: dict[str, Any]) -> list[str]:
    """Names of layout fields whose saved value differs from this loader's (the stream would differ)."""
    return [
        f"{name} {state[name]} -> {value}"
        for name, value in layout.items()
        if name in state and state[name] != value
    ]


def position_from_state(state: dict[str, Any]) -> LoaderPosition:
    """The position saved in `state`, with a clear error when it has none."""
    try:
        return LoaderPosition(epoch=int(state["epoch"]), batch=int(state["batch"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"loader state {state!r} has no valid epoch/batch ({err})") from err
