"""The `ddp` backend: HF Accelerate's prepare (DDP across ranks, nothing on one process)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from a2p.training.backends import Backend, FiniteFn, LossFn
from a2p.training.checkpoint import MODEL_FILE, OPTIMIZER_FILE, load_file


class AccelerateBackend(Backend):
    """Accumulation, clipping and the optimizer step through the accelerator; rank 0 saves all."""

    name = "ddp"

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume_from: Path | None) -> None:
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.module = self.accelerator.unwrap_model(self.model)
        self.clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf

    def micro_step(self, loss_fn: LossFn, finite: FiniteFn) -> tuple[dict[str, torch.Tensor], Any, bool]:
        accelerator, norm, skipped = self.accelerator, None, False
        with accelerator.accumulate(self.model):
            out = loss_fn()
            good = finite(out)  # the same on every rank: they all skip this backward, or none does
            self._poisoned = getattr(self, "_poisoned", False) or not good
            if good:
                accelerator.backward(out["loss"])  # divides by grad_accum
            if accelerator.sync_gradients:
                if not self._poisoned:
                    norm = accelerator.clip_grad_norm_(self.model.parameters(), self.clip)
                # the norm is of the all-reduced gradients, so every rank decides alike
                skipped = self._poisoned or not math.isfinite(float(norm))
                if not skipped:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._poisoned = False
        return out, norm, skipped

    def at_boundary(self) -> bool:
        return bool(self.accelerator.sync_gradients)

    def checkpoint_files(self) -> tuple[dict[str, Any], Callable[[Path], None] | None]:
        return {MODEL_FILE: self.full_state_dict(), OPTIMIZER_FILE: self.optimizer.state_dict()}, None

    def load(self, checkpoint: Path) -> None:
        self.module.load_state_dict(load_file(checkpoint, MODEL_FILE))
        self.optimizer.load_state_dict(load_file(checkpoint, OPTIMIZER_FILE))
