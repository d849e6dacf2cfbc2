"""Exponential moving average of a model's weights, advanced once per optimizer step."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """An fp32 running average of a model's floating parameters; buffers are copied as they are.

    `update(model, step)` is called after optimizer step `step` (1-based) has been applied, never
    per micro-step: with gradient accumulation the weights only change at optimizer steps. Up to
    `start_step` the average is a plain copy of the weights, afterwards
    `avg <- decay * avg + (1 - decay) * weights`.
    """

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self.num_updates = 0
        with torch.no_grad():
            self.params = {
                name: p.detach().float().clone()
                for name, p in model.named_parameters()
                if p.is_floating_point()
            }
            self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def _live(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        named = dict(model.named_parameters())
        missing = sorted(set(self.params) - set(named))
        if missing:
            raise KeyError(f"EMA tracks parameters the model lacks: {missing[:3]}")
        return [self.params[n] for n in self.params], [named[n].detach() for n in self.params]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights after optimizer step `step` into the average (no host sync)."""
        averages, live = self._live(model)
        live = [p.float() if p.dtype != torch.float32 else p for p in live]
        if step <= self.start_step:
            torch._foreach_copy_(averages, live)
        else:
            torch._foreach_lerp_(averages, live, 1.0 - self.decay)
        named_buffers = dict(model.named_buffers())
        for name, buf in self.buffers.items():
            buf.copy_(named_buffers[name])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights (and copied buffers) into `model`, which has the same structure."""
        named = dict(model.named_parameters())
        for name, avg in self.params.items():
            named[name].copy_(avg.to(named[name].dtype))
        named_buffers = dict(model.named_buffers())
        for name, buf in self.buffers.items():
            named_buffers[name].copy_(buf)

    def averaged_copy(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` holding the averaged weights, for evaluation or export."""
        out = copy.deepcopy(model)
        self.copy_to(out)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The averages as a plain mapping (tensors on their current device)."""
        return {
            "decay": self.decay,
            "start_step": self.start_step,
            "num_updates": self.num_updates,
            "params": dict(self.params),
            "buffers": dict(self.buffers),
        }

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own names, loadable by `model.load_state_dict`."""
        return {**self.params, **self.buffers}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore averages saved by `state_dict`, keeping this instance's tensors and devices."""
        for group in ("params", "buffers"):
            mine, theirs = getattr(self, group), state[group]
            if set(mine) != set(theirs):
                raise KeyError(f"EMA {group} do not match the model: {sorted(set(mine) ^ set(theirs))[:3]}")
            for name, tensor in mine.items():
                tensor.copy_(theirs[name])
        self.num_updates = int(state["num_updates"])
