"""The one place that reads the launcher's environment (RANK, WORLD_SIZE, SLURM_*).

Every function works without a process group: a plain process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
