"""How a model is wrapped, stepped and checkpointed across ranks: one small interface, two backends.

- `ddp` (`accelerate.py`): Accelerate's `prepare` (DistributedDataParallel, or nothing on one
  process), accumulation and clipping through the accelerator, the optimizer saved by rank 0.
- `deepspeed` (`deepspeed.py`): a DeepSpeed engine (ZeRO-1/2/3) from the JSON config, which
  accumulates, clips and saves its own sharded optimizer state; under ZeRO-3 the weights are
  partitioned too (`zero3.py`: gathering and the partitioned EMA).

The trainer talks to `Backend` alone and never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from a2p.config.train import TrainConfig
from a2p.errors import A2PError
from a2p.training.backends.zero3 import PartitionedEMA, full_state_dict, is_partitioned
from a2p.training.ema import EMA

LossFn = Callable[[], dict[str, torch.Tensor]]
"""Forward of one micro-batch: the task's loss dict, `"loss"` the scalar to differentiate."""
FiniteFn = Callable[[dict[str, torch.Tensor]], bool]
"""Whether a micro-batch's loss is finite on every rank (the same answer on all of them)."""


class NonFiniteStep(A2PError):
    """A loss or gradient that is not finite where the backend cannot skip the step."""


class Backend:
    """A model on this rank's device, wrapped for data-parallel training, and its optimizer.

    Call `prepare` once with the freshly built model and optimizer; then `model` is what the
    forward runs on, `module` the unwrapped network, `optimizer` what the LR schedule drives.
    """

    name: str = ""
    """`train.backend` value this class implements."""

    def __init__(self, config: TrainConfig, accelerator: Any) -> None:
        self.config = config
        self.accelerator = accelerator
        self.model: Any = None
        self.module: nn.Module | None = None
        self.optimizer: Any = None

    @property
    def device(self) -> torch.device:
        """The device of this rank."""
        return self.accelerator.device

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume_from: Path | None) -> None:
        """Wrap `model` and `optimizer`; `resume_from` is the checkpoint `load` will be given, if any."""
        raise NotImplementedError

    def micro_step(self, loss_fn: LossFn, finite: FiniteFn) -> tuple[dict[str, torch.Tensor], Any, bool]:
        """Forward/backward one micro-batch; at the accumulation boundary clip and step.

        A micro-batch whose loss is not `finite` is not back-propagated, and a step with such a
        micro-batch or a non-finite gradient norm does not change the weights (or, where the
        backend cannot skip it, raises `NonFiniteStep`). Returns the loss dict, the pre-clip
        gradient norm (None between boundaries) and whether the step that just ended was skipped.
        """
        raise NotImplementedError

    def at_boundary(self) -> bool:
        """Whether the last micro-step ended an optimizer step."""
        raise NotImplementedError

    def checkpoint_files(self) -> tuple[dict[str, Any], Callable[[Path], None] | None]:
        """(objects rank 0 saves by file name, a writer every rank runs on the temp directory)."""
        raise NotImplementedError

    def load(self, checkpoint: Path) -> None:
        """Restore the weights and the optimizer state of `checkpoint`."""
        raise NotImplementedError

    def build_ema(self) -> EMA | None:
        """The EMA of `module` the config asks for (per partition under ZeRO-3), or None."""
        ema = self.config.ema
        if not ema.enabled:
            return None
        cls = PartitionedEMA if is_partitioned(self.module) else EMA
        return cls(self.module, ema.decay, ema.start_step)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's whole state_dict (collective under ZeRO-3; complete on rank 0)."""
        return full_state_dict(self.module)

    def close(self) -> None:
        """Forget Accelerate's process-wide singletons so a later run in this process starts clean."""
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def build_backend(
    config: TrainConfig, ds_config: dict[str, Any] | None, find_unused_parameters: bool
) -> Backend:
    """The backend `train.backend` names, with its Accelerator (which picks this rank's device).

    DeepSpeed is driven directly (deepspeed.initialize): Accelerate 1.15's DeepSpeed plugin needs
    `transformers` installed, and on CPU it only works with an explicit gloo group. Accelerate then
    only picks the device; the engine does the data-parallel work.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if ds_config is not None:
        from a2p.training.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(config, accelerator, ds_config)
    from a2p.training.backends.accelerate import AccelerateBackend

    return AccelerateBackend(config, accelerator)
