"""What the loop reports: loss terms and grad norms summed on the device between log steps, then
written once per `train.log.interval` (`train/*`, `perf/*` on rank 0's TensorBoard, the progress bar).

The window's values stay on the device; `TrainLog.write` is the only host sync of a log step,
one all-reduce of every term.
"""

from __future__ import annotations

from typing import Any

import torch

from a2p import distributed
from a2p.training.logging import MetricsWriter, StepTimer, peak_memory_mb


class MetricWindow:
    """Loss terms and grad norms summed on the device between two log steps."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.per_sample: dict[str, list[torch.Tensor]] = {}
        self.micro_steps = 0
        self.grad_norm: torch.Tensor | None = None
        self.optimizer_steps = 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        """One micro-step's loss dict: 0-dim terms summed, per-sample terms kept for a histogram."""
        for name, value in out.items():
            value = value.detach().float()
            if value.dim() > 0:
                self.per_sample.setdefault(name, []).append(value.flatten())
                value = value.mean()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.micro_steps += 1

    def add_grad_norm(self, norm: Any, device: torch.device) -> None:
        """The pre-clip gradient norm of an optimizer step (None between accumulation boundaries)."""
        if norm is None:
            return
        norm = torch.as_tensor(norm, device=device, dtype=torch.float32).detach()
        self.grad_norm = norm if self.grad_norm is None else self.grad_norm + norm
        self.optimizer_steps += 1

    def reduce(self) -> dict[str, float]:
        """Means over the window and over ranks (every rank must call this at the same step)."""
        names = sorted(self.sums)
        values = [self.sums[n] / max(self.micro_steps, 1) for n in names]
        if self.grad_norm is not None:
            names.append("grad_norm")
            values.append(self.grad_norm / max(self.optimizer_steps, 1))
        if not values:
            return {}
        stacked = distributed.all_reduce_mean(torch.stack(values))
        return dict(zip(names, stacked.tolist()))


class TrainLog:
    """The TensorBoard writer, the progress bar and the current metric and timing windows."""

    def __init__(self, writer: MetricsWriter, bar: Any, device: torch.device) -> None:
        self.writer, self.bar, self.device = writer, bar, device
        self.window, self.timer = MetricWindow(), StepTimer()

    def micro_step(
        self, out: dict[str, torch.Tensor], grad_norm: Any, counts: dict[str, float], wait: float
    ) -> None:
        """Record one micro-step: its losses, grad norm, work counts and time spent waiting for data."""
        self.timer.add_wait(wait)
        self.timer.add_counts(counts)
        self.window.add_grad_norm(grad_norm, self.device)
        self.window.add(out)

    def optimizer_step(self) -> None:
        self.timer.steps += 1
        self.bar.update(1)

    def write(self, step: int, lr: float) -> None:
        """Reduce the window over ranks, write it from rank 0, start a new window."""
        values = self.window.reduce()  # the only host sync of the window
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}", refresh=False)
        writer = self.writer
        if writer.enabled:
            scalars = {f"train/{name}": value for name, value in values.items()}
            scalars["train/lr"] = lr
            scalars.update(self.timer.summary())
            scalars["perf/peak_mem_mb"] = peak_memory_mb(self.device)
            writer.scalars(scalars, step)
            for name, chunks in self.window.per_sample.items():
                writer.histogram(f"train/{name}", torch.cat(chunks), step)
            writer.flush()
        self.window, self.timer = MetricWindow(), StepTimer()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
