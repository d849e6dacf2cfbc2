"""Evaluation during training: the task's `evaluate` on the EMA weights, in eval mode, without
shifting the training's random streams, in the training precision, its values to TensorBoard."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from a2p.config.train import TrainConfig
from a2p.training.backends.zero3 import copy_gathered, is_partitioned
from a2p.training.ema import EMA
from a2p.training.logging import MetricsWriter
from a2p.training.rng import capture_rng, restore_rng
from a2p.training.tasks import Task, TaskContext

logger = logging.getLogger(__name__)


class Evaluator:
    """Runs `task.evaluate` every `train.log.eval_interval` steps; keeps one EMA model copy between calls."""

    def __init__(self, task: Task, config: TrainConfig, ctx: TaskContext, writer: MetricsWriter) -> None:
        self.task, self.config, self.ctx, self.writer = task, config, ctx, writer
        self._ema_model: nn.Module | None = None

    def due(self, step: int) -> bool:
        interval = self.config.log.eval_interval
        return bool(interval) and (step % interval == 0 or step == self.config.max_steps)

    def _model(self, module: nn.Module, ema: EMA | None) -> nn.Module:
        """The weights to evaluate: the EMA's where there is one, as a full model on this rank."""
        if is_partitioned(module):
            # ZeRO-3: a full copy of the model on every rank, built for this evaluation and dropped
            # after it, so each rank samples its own share without the engine's collectives.
            model = self.task.build_model().to(self.ctx.device)
            if ema is not None:
                ema.copy_to(model)
            else:
                copy_gathered(module, model)
            return model
        if ema is None:
            return module
        if self._ema_model is None:
            self._ema_model = ema.averaged_copy(module)
        ema.copy_to(self._ema_model)
        return self._ema_model

    def __call__(self, module: nn.Module, ema: EMA | None, step: int) -> None:
        """Evaluate at `step` on every rank; rank 0 logs the results as `eval/NAME`."""
        rng = capture_rng()  # evaluation must not shift the training streams
        model = self._model(module, ema)
        was_training = model.training
        model.eval()
        # evaluate in the training precision: a DeepSpeed bf16 module holds bf16 weights
        bf16 = self.config.precision == "bf16" or any(p.dtype == torch.bfloat16 for p in model.parameters())
        autocast = torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=bf16)
        try:
            with torch.no_grad(), autocast:
                results = self.task.evaluate(model, dataclasses.replace(self.ctx, step=step))
        finally:
            model.train(was_training)
            restore_rng(rng)
        for name, value in results.items():
            self.writer.value(f"eval/{name}", value, step)
        if results:
            logger.info("step %d eval: %s", step, {k: v for k, v in results.items() if isinstance(v, float)})
