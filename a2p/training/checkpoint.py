"""One checkpoint: an atomic, self-describing step directory written by every rank together.

    checkpoints/step_000300/
      meta.json            format, task, step, world size, backend, reason, files (written last)
      config.json          resolved config of the run that wrote it
      model.pt             model state_dict (unwrapped, gathered under ZeRO-3)
      ema.pt               EMA state (see EMA.state_dict), if enabled
      optimizer.pt         optimizer state_dict (Accelerate/DDP; DeepSpeed keeps its own below)
      scheduler.pt         LR scheduler state_dict
      rank_00000.pt        per rank: {"rng": python/numpy/torch/accelerator states, "data": loader position}
      rank_00001.pt
      deepspeed/engine/    DeepSpeed engine checkpoint (every rank writes its shard), if used
      deepspeed/universal/ its universal form, made by the first resume on another rank count

A save writes everything into `checkpoints/.step_000300.tmp/`, fsyncs, renames it to
`step_000300/` and then rewrites `latest` (temp file + rename) and prunes to the last K
(`a2p.training.run_dir`). A crash at any point leaves the previous checkpoint and `latest`
intact and no partial directory under a final name. The directory must be on a filesystem every
rank sees. What goes into the files is `a2p.training.state.TrainState`'s business.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from a2p import distributed
from a2p.errors import A2PError
from a2p.fileio import fsync_dir
from a2p.training.run_dir import CONFIG_FILE, META, point_latest, prune, step_dir_name, write_text

FORMAT_VERSION = 1
"""Version of the checkpoint layout, stored in meta.json."""
MODEL_FILE = "model.pt"
EMA_FILE = "ema.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def rank_file_name(rank: int) -> str:
    """Per-rank state file name."""
    return f"rank_{rank:05d}.pt"


def _save(obj: Any, path: Path) -> None:
    """Write one object with `torch.save` and flush it to disk."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_file(checkpoint: Path, name: str) -> Any:
    """One file of a checkpoint, loaded onto the CPU (plain data and tensors only)."""
    path = Path(checkpoint) / name
    if not path.is_file():
        raise A2PError(f"{path}: missing from checkpoint {checkpoint}")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    shared: Mapping[str, Any],
    rank_state: Mapping[str, Any],
    meta: Mapping[str, Any],
    config: Mapping[str, Any],
    keep: int,
    every_rank: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` atomically; called by every rank, returns the final directory.

    `shared` maps file names to objects rank 0 writes (model, optimizer, ...); `rank_state` is
    this rank's `rank_XXXXX.pt`; `every_rank(tmp_dir)` lets each rank write its own part of a
    sharded state (DeepSpeed). Then rank 0 writes config.json and meta.json, renames the temp
    directory into place, points `latest` at it and deletes all but the newest `keep` (0: none).
    """
    root = Path(root)
    info = distributed.rank_info()
    name = step_dir_name(step)
    tmp = root / f".{name}.tmp"
    final = root / name
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    _save(dict(rank_state), tmp / rank_file_name(info.rank))
    if every_rank is not None:
        every_rank(tmp)
    distributed.barrier()
    if info.is_main:
        for file_name, obj in shared.items():
            _save(obj, tmp / file_name)
        (tmp / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2) + "\n")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        full_meta = {"format": FORMAT_VERSION, **meta, "step": step, "world_size": info.world_size}
        full_meta["files"] = files + [META]
        write_text(tmp / META, json.dumps(full_meta, indent=2) + "\n")
        fsync_dir(tmp)
        if final.exists():
            # Re-saving a step (resumed from an older checkpoint): swap, then drop the old copy.
            old = root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        point_latest(root, name)
        prune(root, keep)
    distributed.barrier()
    return final
