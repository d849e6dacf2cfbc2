"""The `toy` task: a small MLP regressing a fixed random function on a synthetic, resumable stream.

It exists to prove the trainer (exact resume, data-parallel equivalence, preemption, logging)
without the real models or shards. Every micro-batch is a pure function of (seed, position): all
ranks draw the same global batch and keep their own contiguous slice, so N ranks with batch B see
exactly the samples one rank with batch N x B sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from a2p.errors import DataError
from a2p.models.toy import ToyModelConfig
from a2p.training.tasks import ResumableIterable, Task, TaskContext, register_task

_EVAL_POSITION = -1
"""Stream position of the held-out evaluation batch (training uses 0, 1, 2, ...)."""


@dataclass
class ToyConfig(ToyModelConfig):
    """The toy MLP's sizes (`a2p.models.toy`) and how its task runs."""

    step_sleep: float = 0.0
    """Seconds every loss call sleeps, standing in for compute time (preemption tests)."""


class ToyStream:
    """This rank's slice of an endless deterministic sequence of global batches."""

    def __init__(self, config: ToyConfig, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.config = config
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.position = 0
        teacher = torch.Generator().manual_seed(seed)
        # The fixed function to learn: y = sin(x @ W) with W drawn once from the run seed.
        self.teacher = torch.randn(config.in_dim, config.out_dim, generator=teacher) / config.in_dim**0.5

    def batch(self, position: int) -> dict[str, torch.Tensor]:
        """Micro-batch `position` of this rank: {"x": (B, in_dim), "y": (B, out_dim)}."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        global_batch = self.batch_size * self.world_size
        x = torch.randn(global_batch, self.config.in_dim, generator=generator)
        lo = self.rank * self.batch_size
        x = x[lo : lo + self.batch_size]
        return {"x": x, "y": torch.sin(x @ self.teacher)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.batch(self.position)
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position of the next micro-batch."""
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.position = int(state["position"])

    def load_resharded_state(self, states: list[dict[str, Any]]) -> None:
        """Continue from positions saved by a different number of ranks.

        Positions count global batches, so they agree across ranks and carry over exactly.
        """
        positions = {int(s["position"]) for s in states}
        if len(positions) != 1:
            raise DataError(f"toy stream: saved ranks disagree on the position ({sorted(positions)})")
        self.position = positions.pop()


@register_task("toy")
class ToyTask(Task):
    """Regression MLP on `ToyStream`; its loss also reports per-sample errors."""

    config_class = ToyConfig
    presets = {"debug": ToyConfig(), "paper": ToyConfig(hidden=256)}

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        return ToyStream(self.config, ctx.batch_size, ctx.rank, ctx.world_size, ctx.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.config.step_sleep > 0:
            time.sleep(self.config.step_sleep)
        pred = model(batch["x"])  # (B, out_dim)
        per_sample = (pred.float() - batch["y"]).pow(2).mean(dim=1)  # (B,)
        loss = per_sample.mean()
        return {"loss": loss, "mse": loss.detach(), "sample_mse": per_sample.detach()}

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        stream = ToyStream(self.config, ctx.batch_size, ctx.rank, ctx.world_size, ctx.seed)
        batch = stream.batch(_EVAL_POSITION)
        with torch.no_grad():
            pred = model(batch["x"].to(ctx.device))
            mse = (pred.float() - batch["y"].to(ctx.device)).pow(2).mean()
        return {"mse": float(ctx.all_reduce_mean(mse))}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"values": float(batch["y"].numel())}
