"""ZeRO-3: parameters partitioned over the ranks, gathered for checkpoints and evaluation, and their EMA.

DeepSpeed keeps a rank's partition of a parameter in `param.ds_tensor`: a flat slice of
ceil(numel / world_size) elements, slices in rank order, the last padded. Every function here
that gathers is a collective: all ranks must call it together.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from a2p import distributed
from a2p.training.ema import EMA


def is_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions `module`'s parameters over the ranks."""
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


def gathered_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of a ZeRO-3 module's parameters, gathered one at a time on every rank.

    A collective: every rank must consume the whole iterator. Each tensor is valid until the next.
    """
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    for name, param in module.named_parameters(remove_duplicate=False):
        with GatheredParameters([param]):
            yield name, param.detach()


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()`, with ZeRO-3 parameters gathered (collective; complete on rank 0 only)."""
    state = module.state_dict()
    if is_partitioned(module):
        is_main = distributed.rank_info().is_main
        for name, tensor in gathered_parameters(module):
            if is_main:
                state[name] = tensor.cpu().clone()
    return state


@torch.no_grad()
def copy_gathered(module: nn.Module, target: nn.Module) -> None:
    """Write a ZeRO-3 module's gathered weights and its buffers into a full `target` (collective)."""
    named = dict(target.named_parameters(remove_duplicate=False))
    for name, tensor in gathered_parameters(module):
        named[name].copy_(tensor)
    named_buffers = dict(target.named_buffers())
    for name, buf in module.named_buffers():
        named_buffers[name].copy_(buf)


def _floating_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.is_floating_point()}


class PartitionedEMA(EMA):
    """`EMA` of a ZeRO-3 module: each rank averages its own partition of every parameter.

    `EMA.update` folds the partitions in, so it costs no communication and holds 1 / world_size of
    a full fp32 average per rank. Reading the whole average (`state_dict`, `copy_to`) all-gathers
    it, one parameter at a time. The saved form is the full average, as `EMA.state_dict`'s, so
    exports and resumes on any rank count read it.
    """

    def __init__(self, module: nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self.num_updates = 0
        named = _floating_parameters(module)
        self.params = {name: p.ds_tensor.detach().float().clone() for name, p in named.items()}
        self.shapes = {name: p.ds_shape for name, p in named.items()}
        self.buffers = {name: b.detach().clone() for name, b in module.named_buffers()}

    def _live(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        named = _floating_parameters(model)
        return list(self.params.values()), [named[n].ds_tensor.detach() for n in self.params]

    def _full_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full average) on every rank, one all-gather per parameter (collective)."""
        import torch.distributed as dist

        world = distributed.rank_info().world_size
        for name, part in self.params.items():
            parts = [part]
            if world > 1:
                parts = [torch.empty_like(part) for _ in range(world)]
                dist.all_gather(parts, part)
            shape = self.shapes[name]
            yield name, torch.cat(parts)[: shape.numel()].view(shape)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the full averages (and buffers) into a non-partitioned `model` (collective)."""
        named = dict(model.named_parameters())
        for name, full in self._full_params():
            named[name].copy_(full)
        named_buffers = dict(model.named_buffers())
        for name, buf in self.buffers.items():
            named_buffers[name].copy_(buf)

    def averaged_copy(self, model: nn.Module) -> nn.Module:
        raise TypeError("a ZeRO-3 module cannot be copied: build the model and use copy_to")

    def state_dict(self) -> dict[str, Any]:
        """`EMA.state_dict` of the full averages, on the CPU (collective; complete on rank 0 only)."""
        return {**super().state_dict(), "params": self.model_state_dict()}

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The full averages on the CPU (collective; complete on rank 0 only)."""
        is_main = distributed.rank_info().is_main
        return {name: full.cpu().clone() for name, full in self._full_params() if is_main}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's partitions of full averages saved by `state_dict` (any rank count)."""
        rank = distributed.rank_info().rank
        for group in ("params", "buffers"):
            mine, theirs = getattr(self, group), state[group]
            if set(mine) != set(theirs):
                raise KeyError(f"EMA {group} do not match the model: {sorted(set(mine) ^ set(theirs))[:3]}")
        for name, part in self.params.items():
            flat = state["params"][name].reshape(-1)[rank * part.numel() : (rank + 1) * part.numel()]
            part.zero_()
            part[: flat.numel()].copy_(flat)
        for name, buf in self.buffers.items():
            buf.copy_(state["buffers"][name])
        self.num_updates = int(state["num_updates"])
