"""The random streams of one process: seeded per rank, captured into checkpoints, restored exactly."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed python, numpy and torch from (seed, rank, step); each rank gets its own streams."""
    derived = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


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
