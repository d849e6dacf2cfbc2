"""Timing for the benches: a stopwatch of labelled laps (and a stand-in that times a model's
methods on it), and seconds per call of functions.

On a GPU the work a call launches may still run when it returns: `Stopwatch` records CUDA events
(no synchronisation while timing, one when asked for the totals); `timed_call`, `time_calls` and
`time_in_turns` synchronise the device before and after every call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class Stopwatch:
    """Seconds spent per label; on CUDA timed with events, so timing adds no synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._laps: list[tuple[str, Any, Any]] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextmanager
    def lap(self, label: str) -> Iterator[None]:
        start = self._mark()
        yield
        self._laps.append((label, start, self._mark()))

    def timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, each call timed under `label`."""

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.lap(label):
                return fn(*args, **kwargs)

        return call

    def seconds(self) -> dict[str, float]:
        """Total seconds per label (waits for the device first)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for label, start, end in self._laps:
            totals[label] += start.elapsed_time(end) / 1000.0 if self.cuda else end - start
        return dict(totals)


class Timed:
    """Stands in for a model: calls of the methods named in `labels` (the model itself:
    `__call__`) are timed under their label; everything else passes through."""

    def __init__(self, target: Any, stopwatch: Stopwatch, labels: dict[str, str]) -> None:
        self._target, self._stopwatch, self._labels = target, stopwatch, labels

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        label = self._labels.get(name)
        return value if label is None else self._stopwatch.timed(label, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._stopwatch.timed(self._labels["__call__"], self._target)(*args, **kwargs)


def synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on `device` when it is a GPU; nothing on a CPU or None."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], T], device: torch.device | None = None) -> tuple[T, float]:
    """fn's result and the wall seconds of the call, including the device work it launched."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def time_in_turns(
    fns: Sequence[Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 0,
    device: torch.device | None = None,
) -> list[list[float]]:
    """Seconds of each of `repeats` calls of every one of `fns`, after `warmup` untimed rounds.

    The functions take turns (a, b, a, b, ...), so a change of machine load in the middle of a
    run slows all alike and their ratios stay fair.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    spent: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, seconds in zip(fns, spent):
            seconds.append(timed_call(fn, device)[1])
    return spent


def time_calls(
    fn: Callable[[], object], repeats: int, *, warmup: int = 0, device: torch.device | None = None
) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    return time_in_turns([fn], repeats, warmup=warmup, device=device)[0]
