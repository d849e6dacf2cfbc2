"""Slim inference exports: one safetensors file of EMA weights with its config in the metadata.

`export_run` turns a training run (its latest checkpoint, or a named step directory) into a file
that `load_export` alone rebuilds into the model, with no run directory, optimizer or trainer.
Metadata keys (all strings, as safetensors requires): `format`, `format_version`, `task`,
`config` (the task section of the resolved config, JSON), `step`, `weights` (ema or model),
`a2p_version`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from a2p.errors import A2PError
from a2p.training import checkpoint as ckpt
from a2p.training.tasks import build_task
from a2p.version import __version__

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "a2p-export"
EXPORT_VERSION = "1"


@dataclass
class Exported:
    """A model rebuilt from an export, in eval mode on the CPU, with what it was made from."""

    task: str
    config: dict[str, Any]
    model: nn.Module
    step: int
    weights: str
    stats: dict[str, list[float]] | None = None
    """Normalization stats of the shards the model was trained on (body/face mean and std), if known."""


def _checkpoint_of(run: str | Path) -> Path:
    path = Path(run)
    if (path / ckpt.META).is_file():
        return path
    found = ckpt.latest_checkpoint(ckpt.checkpoint_root(path))
    if found is None:
        raise A2PError(f"{path}: neither a checkpoint directory nor a run directory with checkpoints")
    return found


def model_of_run(
    run: str | Path, use_ema: bool = True
) -> tuple[dict[str, Any], dict[str, Any], nn.Module, str]:
    """(checkpoint meta, resolved config, model with the EMA or raw weights, which) of a run."""
    checkpoint = _checkpoint_of(run)
    meta = ckpt.read_meta(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    model = build_task(meta["task"], config["task"]).build_model()
    weights = "model"
    state = ckpt.load_file(checkpoint, "model.pt")
    if use_ema and (checkpoint / "ema.pt").is_file():
        ema = ckpt.load_file(checkpoint, "ema.pt")
        # The EMA also tracks non-persistent buffers (e.g. rotary frequencies): keep the model's keys.
        averaged = {**ema["params"], **ema["buffers"]}
        state = {name: averaged.get(name, tensor) for name, tensor in state.items()}
        weights = "ema"
    elif use_ema:
        logger.warning(
            "%s has no EMA weights (train.ema.enabled was false); using the raw weights", checkpoint
        )
    model.load_state_dict(state, strict=True)
    return meta, config, model.eval(), weights


def load_run_or_export(path: str | Path, expect_task: str) -> Exported:
    """A trained model from an export file or from a run (its latest checkpoint's EMA weights)."""
    path = Path(path)
    if path.is_file():
        return load_export(path, expect_task)
    if not path.exists():
        raise A2PError(f"{path}: no such export file or run directory")
    meta, config, model, weights = model_of_run(path)
    if meta["task"] != expect_task:
        raise A2PError(f"{path}: is a {meta['task']!r} run, but a {expect_task!r} model is needed here")
    return Exported(meta["task"], config["task"], model, int(meta["step"]), weights, _training_stats(config))


def _training_stats(config: dict[str, Any]) -> dict[str, list[float]] | None:
    """The normalization stats of the run's shards (its manifest), so outputs can be denormalized."""
    from a2p.data.format import load_manifest

    data = config.get("train", {}).get("data")
    if not data:
        return None
    try:
        return load_manifest(data).stats
    except A2PError:
        logger.warning("%s: shard manifest not readable; the export carries no normalization stats", data)
        return None


def export_run(run: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the EMA weights (or the raw weights) of `run`'s latest checkpoint to `out`, atomically."""
    meta, config, model, weights = model_of_run(run, use_ema)
    checkpoint = _checkpoint_of(run)
    tensors = {name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
    metadata = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "task": meta["task"],
        "config": json.dumps(config["task"]),
        "step": str(meta["step"]),
        "weights": weights,
        "a2p_version": __version__,
        "stats": json.dumps(_training_stats(config)),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    logger.info(
        "exported %s (%s weights, step %s) of %s to %s", meta["task"], weights, meta["step"], checkpoint, out
    )
    return out


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an export file, with a clear error for anything that is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise A2PError(f"{path}: export file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise A2PError(f"{path}: not a safetensors file ({err})") from err
    if metadata.get("format") != EXPORT_FORMAT:
        raise A2PError(f"{path}: not an a2p export (no '{EXPORT_FORMAT}' metadata; use `a2p export RUN_DIR`)")
    if metadata.get("format_version") != EXPORT_VERSION:
        raise A2PError(f"{path}: export format {metadata.get('format_version')} is not supported")
    return metadata


def load_export(path: str | Path, expect_task: str | None = None) -> Exported:
    """Rebuild the model of an export file from the file alone (CPU, eval mode)."""
    metadata = read_export_metadata(path)
    task = metadata["task"]
    if expect_task is not None and task != expect_task:
        raise A2PError(f"{path}: is a {task!r} model, but a {expect_task!r} model is needed here")
    config = json.loads(metadata["config"])
    model = build_task(task, config).build_model()
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    model.eval()
    stats = json.loads(metadata.get("stats", "null"))
    return Exported(task, config, model, int(metadata["step"]), metadata["weights"], stats)
