"""Training metrics: one TensorBoard writer on rank 0, a window of step timings, peak memory.

Values stay on the device between log steps; the trainer reads them back (`.item()`) only when it
writes, so the GPU is never stalled for a metric.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class MetricsWriter:
    """TensorBoard event files under `log_dir` when `enabled` (rank 0), else a silent no-op.

    `purge_step` (the first step a resumed run logs) hides events a crashed run logged from it on.
    """

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run logged after the checkpoint it resumes from.
            self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        """Whether anything is written."""
        return self._writer is not None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One scalar per tag, e.g. `train/loss`."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A distribution of per-sample values."""
        if self._writer is not None and values.numel() > 0:
            self._writer.add_histogram(tag, values.detach().float().cpu(), global_step=step)

    def value(self, tag: str, value: Any, step: int) -> None:
        """Whatever an evaluation returns: a number, a (C, H, W) image, or a matplotlib figure."""
        if self._writer is None:
            return
        if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            self._writer.add_scalar(tag, float(value), global_step=step)
        elif hasattr(value, "savefig"):
            self._writer.add_figure(tag, value, global_step=step)
        elif isinstance(value, torch.Tensor) and value.dim() == 3:
            self._writer.add_image(tag, value.detach().cpu(), global_step=step)
        elif isinstance(value, torch.Tensor) and value.dim() == 1:
            self.histogram(tag, value, step)
        else:
            logger.warning("cannot log %s of type %s to TensorBoard", tag, type(value).__name__)

    def flush(self) -> None:
        """Push pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class StepTimer:
    """Wall time, data-wait time and work counts over the optimizer steps since the last log."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window now."""
        self.start = time.perf_counter()
        self.data_wait = 0.0
        self.steps = 0
        self.counts: dict[str, float] = {}

    def add_wait(self, seconds: float) -> None:
        """Time the loop spent waiting for a batch."""
        self.data_wait += seconds

    def add_counts(self, counts: Mapping[str, float]) -> None:
        """Work done by this device in one micro-step, e.g. {"samples": 8, "frames": 4800}."""
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0.0) + value

    def summary(self) -> dict[str, float]:
        """`perf/*` scalars of the window; call after the device has been synchronised."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {
            "perf/step_time": elapsed / max(self.steps, 1),
            "perf/data_wait_share": self.data_wait / elapsed,
        }
        for name, value in self.counts.items():
            out[f"perf/{name}_per_sec"] = value / elapsed
        return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: allocator peak on an accelerator, max RSS on CPU."""
    if device.type != "cpu" and torch.accelerator.is_available():
        return torch.accelerator.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
