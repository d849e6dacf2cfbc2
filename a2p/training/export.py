"""Training runs to inference exports, and trained models from a run or an export.

`export_run` turns a run (its latest checkpoint, or a named step directory) into the export file
of `a2p.models.export`, which inference loads with no trainer code. `load_run_or_export` is for
tasks that train on another model's output (the guide on the VQ's tokens).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from a2p.config.audio import REFERENCE_FEATURE_DIMS
from a2p.errors import A2PError
from a2p.models.export import FRONTEND_PREFIX, Exported, load_export, write_export
from a2p.models.frontend import read_reference_front_end
from a2p.models.registry import build_model
from a2p.training.checkpoint import EMA_FILE, MODEL_FILE, load_file
from a2p.training.run_dir import META, checkpoint_root, latest_checkpoint, read_meta

logger = logging.getLogger(__name__)


def _checkpoint_of(run: str | Path) -> Path:
    path = Path(run)
    if (path / META).is_file():
        return path
    found = latest_checkpoint(checkpoint_root(path))
    if found is None:
        raise A2PError(f"{path}: neither a checkpoint directory nor a run directory with checkpoints")
    return found


def model_of_run(
    run: str | Path, use_ema: bool = True
) -> tuple[dict[str, Any], dict[str, Any], nn.Module, str]:
    """(checkpoint meta, resolved config, model with the EMA or raw weights, which) of a run."""
    checkpoint = _checkpoint_of(run)
    meta = read_meta(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    model = build_model(meta["task"], config["task"])
    weights = "model"
    state = load_file(checkpoint, MODEL_FILE)
    if use_ema and (checkpoint / EMA_FILE).is_file():
        ema = load_file(checkpoint, EMA_FILE)
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
    return Exported(
        meta["task"], config["task"], model, int(meta["step"]), weights, _training_stats(config),
        _front_end_tensors(config),
    )  # fmt: skip


def _front_end_tensors(config: dict[str, Any]) -> dict[str, Tensor] | None:
    """The reference front end the run trained on (read again from the files its config names),
    which the export stores beside the model; None for a2p's featurizers (rebuilt from their name)."""
    task = config.get("task", {})
    featurizer = task.get("featurizer")
    if featurizer not in REFERENCE_FEATURE_DIMS:
        return None
    return read_reference_front_end(featurizer, task.get("featurizer_weights"), task.get("lip_weights"))


def _training_stats(config: dict[str, Any]) -> dict[str, list[float]] | None:
    """The normalization stats the run read its shards in (`train.units` of their manifest), so
    outputs can be denormalized; the person's units carry the waveform's audio_mean/std_flat too."""
    from a2p.data.format import load_manifest

    train = config.get("train", {})
    data = train.get("data")
    if not data:
        return None
    try:
        return load_manifest(data).units_stats(train.get("units", "train"), data)[1]
    except A2PError:
        logger.warning("%s: shard manifest not readable; the export carries no normalization stats", data)
        return None


def export_run(run: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the EMA weights (or the raw weights) of `run`'s latest checkpoint to `out`, atomically."""
    meta, config, model, weights = model_of_run(run, use_ema)
    checkpoint = _checkpoint_of(run)
    frontend = _front_end_tensors(config) or {}
    out = write_export(
        out,
        model.state_dict() | {FRONTEND_PREFIX + name: tensor for name, tensor in frontend.items()},
        task=meta["task"],
        config=config["task"],
        step=int(meta["step"]),
        weights=weights,
        stats=_training_stats(config),
    )
    logger.info(
        "exported %s (%s weights, step %s) of %s to %s", meta["task"], weights, meta["step"], checkpoint, out
    )
    return out
