"""Seeded weights for the reference equivalence tests, rebuilt from a committed key/shape list.

The golden arrays under `tests/fixtures/reference/` were made by running the reference's own
classes (facebookresearch/audio2photoreal, with fairseq's wav2vec 1.0 for the audio front end) on
exactly these weights and inputs; no reference code is in this repository. Each test's docstring
says how its fixture was made.

Weights: for each (key, shape) in state-dict order, one float64 draw from one generator seeded
with `seed`, `randn(shape) * scale` with scale 1/sqrt(fan_in) for tensors of two or more
dimensions (fan_in = the product of all but the first), 1 for keys named `null_*` (drawn as the
reference initializes them), and 0.1 for one-dimensional tensors; `overrides` replace the draw of
named keys (a buffer that must be 1, counts that must be positive) after it is made, so the
stream of every other key stays the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"


def read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """The committed (key, shape) list `fixtures/reference/NAME.keys.json`, in state-dict order."""
    entries = json.loads((FIXTURES / f"{name}.keys.json").read_text())
    return [(key, tuple(shape)) for key, shape in entries]


def write_keys(name: str, state: dict[str, torch.Tensor]) -> None:
    """Write the (key, shape) list of a state dict (used by the fixture scripts)."""
    entries = [[key, list(tensor.shape)] for key, tensor in state.items()]
    (FIXTURES / f"{name}.keys.json").write_text(json.dumps(entries, indent=0) + "\n")


def seeded_state_dict(
    entries: list[tuple[str, tuple[int, ...]]],
    seed: int,
    overrides: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """float64 tensors for `entries`, drawn in order from one generator seeded with `seed`."""
    overrides = overrides or {}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in entries:
        draw = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key.rpartition(".")[2].startswith("null_"):
            scale = 1.0
        elif len(shape) >= 2:
            scale = 1.0 / math.sqrt(max(math.prod(shape[1:]), 1))
        else:
            scale = 0.1
        tensor = draw * scale
        state[key] = overrides[key](tensor) if key in overrides else tensor
    return state


def vq_overrides(levels: int = 4) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """`overrides` for the reference's VQ: every codebook initialized, positive cluster counts."""
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for level in range(levels):
        prefix = f"quantizer.layers.{level}._codebook."
        out[prefix + "inited"] = torch.ones_like
        out[prefix + "cluster_size"] = lambda t: t.abs() * 100.0 + 1.0
    return out


def seeded_front_end(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The seeded weights of the audio front end `name` ("audio": a released file's `audio_model.*`
    and `audio_resampler.kernel`; "lip": the lip regressor), with the buffers that are not
    weights (resampler kernels, sinusoidal tables) at their real values from a2p's own code."""
    from a2p.models.lip import sinusoidal_table
    from a2p.models.wav2vec1 import resample_kernel

    overrides: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for key, shape in read_keys(name):
        if key.endswith("resampler.kernel"):
            overrides[key] = lambda _: resample_kernel().double()
        elif key.endswith("positional_encoding.pe"):
            overrides[key] = lambda _, shape=shape: sinusoidal_table(*shape).double()
    return seeded_state_dict(read_keys(name), seed, overrides)


def seeded_array(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    """A float64 input array randn(shape) * scale from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * scale


def read_golden(name: str) -> dict[str, np.ndarray]:
    """The arrays of `fixtures/reference/NAME.npz`."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def assert_close_to_golden(actual: torch.Tensor, golden: np.ndarray, what: str) -> None:
    """float64: within 1e-8 absolute; float32: within 1e-4 of the golden output's std."""
    expected = torch.from_numpy(golden)
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(actual.shape)} != {expected.shape}"
    )
    if actual.dtype == torch.float64:
        bound = 1e-8
    else:
        bound = 1e-4 * float(expected.std())
    error = float((actual.double() - expected.double()).abs().max())
    assert error <= bound, f"{what}: max |a2p - reference| = {error:.3g} > {bound:.3g}"
