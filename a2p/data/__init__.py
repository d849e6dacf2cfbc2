"""Shards and the streaming loader: `format` is the on-disk contract, `pipeline`
(training) and `eval_loader` read it through `shards`.

Training: `build_train_loader(shard_dir, batch_size, seed=..., num_workers=...)` gives a rank's
resumable `TrainLoader` (`state_dict()` / `load_state_dict()`); evaluation:
`build_eval_loader(shard_dir, batch_size, split="val")`. Batch keys are listed in `a2p.data.crops`.

The names below are imported on first use, so `a2p.data.format` stays cheap to import (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CropSpec": "a2p.data.crops",
    "allocate": "a2p.data.crops",
    "fill": "a2p.data.crops",
    "draw_crop": "a2p.data.crops",
    "eval_crops": "a2p.data.crops",
    "NormStats": "a2p.data.decode",
    "iter_shard": "a2p.data.decode",
    "Manifest": "a2p.data.format",
    "load_manifest": "a2p.data.format",
    "DEFAULT_OPEN_SHARDS": "a2p.data.pipeline",
    "EvalLoader": "a2p.data.eval_loader",
    "EvalStream": "a2p.data.eval_loader",
    "TrainLoader": "a2p.data.pipeline",
    "TrainStream": "a2p.data.pipeline",
    "build_eval_loader": "a2p.data.eval_loader",
    "build_train_loader": "a2p.data.pipeline",
    "worker_init": "a2p.data.shards",
    "LoaderPosition": "a2p.data.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'a2p.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
