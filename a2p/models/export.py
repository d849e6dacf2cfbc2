"""The slim inference export: one safetensors file of weights with the model's config in its metadata.

`load_export` rebuilds the network from the file alone (through `a2p.models.registry`), with no
run directory, optimizer or trainer; `write_export` writes one atomically (`a2p export` makes
them from training runs, `a2p.training.export`). Metadata keys (all strings, as safetensors
requires): `format`, `format_version`, `task`, `config` (the task section of the resolved run
config, JSON), `step`, `weights` (ema or model), `a2p_version`, `stats` (JSON, or null).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from a2p.errors import A2PError
from a2p.models.registry import build_model
from a2p.version import __version__

EXPORT_FORMAT = "a2p-export"
EXPORT_VERSION = "1"
FRONTEND_PREFIX = "frontend."
"""Keys of the frozen audio front end's tensors stored beside the model's (see `Exported.frontend`)."""


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
    frontend: dict[str, torch.Tensor] | None = None
    """Tensors of a frozen audio front end stored with the model (`frontend.*` keys, prefix removed):
    the reference's vq-wav2vec and lip regressor in an `a2p import-reference` export."""


def write_export(
    out: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    task: str,
    config: dict[str, Any],
    step: int,
    weights: str,
    stats: dict[str, list[float]] | None,
) -> Path:
    """Write an export file atomically (temp name, then rename); `config` is the task section.

    Non-finite weights are refused (naming the tensors), so a broken run is never exported.
    """
    broken = [
        name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if broken:
        raise A2PError(
            f"{out}: not written: {len(broken)} tensor(s) hold NaN or Inf ({', '.join(broken[:3])})"
        )
    metadata = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "task": task,
        "config": json.dumps(config),
        "step": str(step),
        "weights": weights,
        "a2p_version": __version__,
        "stats": json.dumps(stats),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tensors = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out)
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
    model = build_model(task, config)
    tensors = load_file(str(path), device="cpu")
    frontend = {
        k.removeprefix(FRONTEND_PREFIX): v for k, v in tensors.items() if k.startswith(FRONTEND_PREFIX)
    }
    model.load_state_dict(
        {k: v for k, v in tensors.items() if not k.startswith(FRONTEND_PREFIX)}, strict=True
    )
    model.eval()
    stats = json.loads(metadata.get("stats", "null"))
    return Exported(task, config, model, int(metadata["step"]), metadata["weights"], stats, frontend or None)
