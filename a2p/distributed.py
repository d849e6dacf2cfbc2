"""The one place that reads the launcher's environment (RANK, WORLD_SIZE, SLURM_*).

Every function works without a process group: a plain process is rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank, 0 .. world_size - 1."""
    world_size: int = 1
    """Number of processes in the job."""
    local_rank: int = 0
    """Rank on this node (selects the GPU)."""
    node_rank: int = 0
    """Index of this node."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def rank_info() -> RankInfo:
    """Rank and world size from an initialized process group, else the launcher's variables.

    torchrun/accelerate/deepspeed set RANK/WORLD_SIZE/LOCAL_RANK; a bare `srun` sets only
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, which are used as a fallback.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = _env_int(("RANK", "SLURM_PROCID"), 0)
        world = _env_int(("WORLD_SIZE", "SLURM_NTASKS"), 1)
    local_rank = _env_int(("LOCAL_RANK", "SLURM_LOCALID"), 0)
    node_rank = _env_int(("GROUP_RANK", "NODE_RANK", "SLURM_NODEID"), 0)
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank, node_rank=node_rank)


def is_initialized() -> bool:
    """Whether a default process group is open."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def export_launcher_env() -> RankInfo:
    """Make a bare `srun` launch look like torchrun's: fill RANK/WORLD_SIZE/LOCAL_RANK from SLURM_*.

    Accelerate and `torch.distributed`'s `env://` rendezvous read only the torchrun names, so a job
    started by `srun python -m ...` (one task per GPU) needs them copied. MASTER_ADDR/MASTER_PORT
    are left to the launch script (the first node of the allocation), with 29500 as the port default.
    """
    info = rank_info()
    if info.world_size > 1 and "RANK" not in os.environ:
        os.environ["RANK"] = str(info.rank)
        os.environ["WORLD_SIZE"] = str(info.world_size)
        os.environ["LOCAL_RANK"] = str(info.local_rank)
        os.environ.setdefault("MASTER_PORT", "29500")
    return info


def init_process_group(
    backend: str | None = None, single: bool = False, timeout_s: float | None = None
) -> RankInfo:
    """Join the job's default process group if there is more than one process; idempotent.

    `backend` defaults to NCCL when CUDA is available and gloo otherwise (DeepSpeed on CPU needs
    this gloo group to exist before its engine is built). `single` also makes a one-process group
    for a plain one-process run, for libraries that insist on one (DeepSpeed). `timeout_s`: how
    long a collective waits for the other ranks before it fails (None: torch's default).
    """
    import torch
    import torch.distributed as dist

    info = export_launcher_env()
    if is_initialized():
        return rank_info()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if info.world_size > 1:
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        extra = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **extra)
    elif single:
        # DeepSpeed also insists on the launcher's variables.
        for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(name, value)
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return rank_info()


def destroy_process_group() -> None:
    """Leave the default process group, if one is open."""
    import torch.distributed as dist

    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    import torch.distributed as dist

    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_rank(flag: bool, device: Any = "cpu") -> bool:
    """True on every rank if `flag` is true on any rank (one all-reduce of one element)."""
    import torch
    import torch.distributed as dist

    if not is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0.0)


def all_reduce_mean(tensor: Any) -> Any:
    """The mean of `tensor` over ranks (a new tensor); the tensor itself without a process group."""
    import torch.distributed as dist

    if not is_initialized() or dist.get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects); `[obj]` without a process group."""
    import torch.distributed as dist

    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank; `obj` itself without a process group."""
    import torch.distributed as dist

    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
