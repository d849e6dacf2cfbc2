"""Atomic, self-describing checkpoint directories with a `latest` pointer and keep-last-K.

Layout of a run directory:

    RUN_DIR/
      run.json                 task name and a2p version: a run directory holds one task's run
      config.json              resolved config, written before step 0
      tensorboard/             event files (rank 0)
      checkpoints/
        latest                 text file naming the newest step directory ("step_000300")
        step_000200/
        step_000300/
          meta.json            format, task, step, world size, backend, reason, files (written last)
          config.json          resolved config of the run that wrote it
          model.pt             model state_dict (unwrapped, fp32 as trained)
          ema.pt               EMA state (see EMA.state_dict), if enabled
          optimizer.pt         optimizer state_dict (DDP; under DeepSpeed see deepspeed/)
          scheduler.pt         LR scheduler state_dict
          rank_00000.pt        per rank: {"rng": python/numpy/torch/accelerator states, "data": loader position}
          rank_00001.pt
          deepspeed/engine/    DeepSpeed engine checkpoint (every rank writes its shard), if used
          deepspeed/universal/ its universal form, made by the first resume on another rank count

A save writes everything into `checkpoints/.step_000300.tmp/`, fsyncs, renames it to
`step_000300/` and then rewrites `latest` (temp file + rename). A crash at any point leaves the
previous checkpoint and `latest` intact and no partial directory under a final name.
All ranks call `save_checkpoint`; the directory must be on a filesystem every rank sees.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from a2p import distributed
from a2p.errors import A2PError
from a2p.fileio import fsync_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the checkpoint layout, stored in meta.json."""
CHECKPOINTS = "checkpoints"
"""Folder of a run directory that holds the step directories."""
LATEST = "latest"
"""Name of the pointer file naming the newest step directory."""
META = "meta.json"
"""Metadata file, the last one written into a step directory."""

DEEPSPEED_DIR = "deepspeed"
"""Folder of a step directory that holds the DeepSpeed engine's checkpoint."""
ENGINE_TAG = "engine"
"""DeepSpeed tag (sub-folder of `deepspeed/`) of the ZeRO shards as the engine wrote them."""
UNIVERSAL_TAG = "universal"
"""DeepSpeed tag (sub-folder of `deepspeed/`) of their universal form, loadable on any rank count."""

_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """`step_000100` for step 100 (at least six digits, so names sort by step up to 10^6)."""
    return f"step_{step:06d}"


def rank_file_name(rank: int) -> str:
    """Per-rank state file name."""
    return f"rank_{rank:05d}.pt"


def checkpoint_root(run_dir: str | Path) -> Path:
    """The `checkpoints` folder of a run directory."""
    return Path(run_dir) / CHECKPOINTS


# --- random streams -------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's random streams (python, numpy, torch CPU, accelerator if any) as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.accelerator.is_available():
        device_type = torch.accelerator.current_accelerator().type
        state["accelerator"] = {
            "type": device_type,
            "states": torch.get_device_module(device_type).get_rng_state_all(),
        }
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set this process's random streams to a `capture_rng()` result."""
    random.setstate(_as_tuple(state["python"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    saved = state.get("accelerator")
    if saved is not None and torch.accelerator.is_available():
        device_type = torch.accelerator.current_accelerator().type
        if saved["type"] == device_type:
            module = torch.get_device_module(device_type)
            states = saved["states"][: module.device_count()]
            module.set_rng_state_all(states)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- files ------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _save(obj: Any, path: Path) -> None:
    """Write one object with `torch.save` and flush it to disk."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_file(checkpoint: Path, name: str) -> Any:
    """One file of a checkpoint, loaded onto the CPU (plain data and tensors only)."""
    path = Path(checkpoint) / name
    if not path.is_file():
        raise A2PError(f"{path}: missing from checkpoint {checkpoint}")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """meta.json of a step directory."""
    path = Path(checkpoint) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise A2PError(f"{checkpoint}: not a checkpoint directory (no {META})") from err
    except json.JSONDecodeError as err:
        raise A2PError(f"{path}: not valid JSON ({err})") from err


# --- finding checkpoints --------------------------------------------------------------------


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step directories under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The step directory `latest` names; if that is gone, the newest complete one; else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / META).is_file():
            return target
        logger.warning("%s names %s, which is missing; using the newest complete checkpoint", pointer, target)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` means: None for a fresh start, `latest`, or a step directory path.

    `latest` in a run without checkpoints is a fresh start (a requeued job preempted before its
    first save); a path that is not a checkpoint is an error.
    """
    if resume is None:
        return None
    if resume == LATEST:
        return latest_checkpoint(checkpoint_root(run_dir))
    path = Path(resume)
    if (path / CHECKPOINTS).is_dir() or (path / LATEST).is_file():
        found = latest_checkpoint(path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path)
        if found is None:
            raise A2PError(f"--resume {resume}: no checkpoint in it")
        return found
    read_meta(path)
    return path


# --- saving ---------------------------------------------------------------------------------


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
        (tmp / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        full_meta = {"format": FORMAT_VERSION, **meta, "step": step, "world_size": info.world_size}
        full_meta["files"] = files + [META]
        _write_text(tmp / META, json.dumps(full_meta, indent=2) + "\n")
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
        _write_text(root / LATEST, name + "\n")
        prune(root, keep)
    distributed.barrier()
    return final


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step directories (never the one `latest` names)."""
    if keep <= 0:
        return []
    found = list_checkpoints(root)
    latest = latest_checkpoint(root)
    removed = []
    for _, path in found[:-keep]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# --- DeepSpeed universal checkpoints -----------------------------------------------------------


def universal_checkpoint(checkpoint: str | Path) -> Path:
    """The universal form of a checkpoint's ZeRO shards, converted on first use; every rank calls it.

    ZeRO shards are cut for the rank count that wrote them. DeepSpeed's universal format keeps
    each parameter's fp32 weights and Adam moments whole, and an engine configured with
    `"checkpoint": {"load_universal": true}` re-cuts them for its own rank count. Rank 0 converts
    `deepspeed/engine/` into a temp folder and renames it to `deepspeed/universal/`, so it is
    either complete or absent, is reused by a later resume and goes away with its checkpoint;
    the other ranks wait. Returns the `deepspeed/` folder to load with tag `UNIVERSAL_TAG`.
    Raises `A2PError` on every rank if the conversion fails.
    """
    root = Path(checkpoint) / DEEPSPEED_DIR
    final = root / UNIVERSAL_TAG
    error = None
    if distributed.rank_info().is_main and not final.is_dir():
        try:
            _convert_to_universal(root / ENGINE_TAG, final)
        except Exception as err:  # any failure of the converter is reported on every rank below
            logger.debug("universal conversion failed", exc_info=True)
            error = f"{type(err).__name__}: {err}"
    errors = [e for e in distributed.all_gather_objects(error) if e]  # also the barrier
    if errors:
        raise A2PError(
            f"{root / ENGINE_TAG}: conversion to a DeepSpeed universal checkpoint failed ({errors[0]})"
        )
    return root


def _convert_to_universal(engine_dir: Path, final: Path) -> None:
    """Run DeepSpeed's `ds_to_universal` on `engine_dir`, writing `final` atomically."""
    from deepspeed.checkpoint import ds_to_universal

    if not engine_dir.is_dir():
        raise A2PError(f"{engine_dir}: no DeepSpeed engine checkpoint to convert")
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a conversion that crashed
    # The converter also writes `latest_universal` beside its output: keep that inside tmp.
    out = tmp / final.name
    args = argparse.Namespace(
        input_folder=str(engine_dir),
        output_folder=str(out),
        num_extract_workers=1,  # in this process: no process pool
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 engines do not record the (empty) model-parallel info
    )
    printed = io.StringIO()
    logger.info("converting %s to a DeepSpeed universal checkpoint", engine_dir)
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        ds_to_universal.main(args)
    logger.debug("ds_to_universal: %s", printed.getvalue())
    for path in out.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    os.replace(out, final)
    fsync_dir(final.parent)
    shutil.rmtree(tmp, ignore_errors=True)
