"""The loader's position: the next batch a rank delivers, as (epoch, batch) of its loader epochs.

With the global order (`a2p.data.order`) a batch is a pure function of the run's micro-batch
number, so a position needs nothing else: which worker makes a batch does not change it, and
the draws consumed before it carry a run over to another world size (`TrainLoader`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from a2p.errors import DataError


@dataclass
class LoaderPosition:
    """Where a rank's training stream stands: the next batch it delivers is batch `batch` of `epoch`."""

    epoch: int = 0
    """Loader epoch number (0-based): `batches_per_epoch` micro-batches each."""
    batch: int = 0
    """Batches of this epoch already delivered to the consumer."""

    def normalized(self, batches_per_epoch: int) -> LoaderPosition:
        """The same position with a finished epoch written as the start of the next one."""
        if self.batch >= batches_per_epoch:
            return LoaderPosition(
                self.epoch + self.batch // batches_per_epoch, self.batch % batches_per_epoch
            )
        return LoaderPosition(self.epoch, self.batch)


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
