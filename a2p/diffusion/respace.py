"""Respacing: sample with a subset of the training timesteps.

A respaced process keeps alpha_bar at the chosen timesteps and recomputes its betas from them,
beta'_i = 1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) (Nichol & Dhariwal, 2021, sec. 4), so every
sampler runs unchanged on it; `NoiseSchedule.timesteps` keeps the original timesteps the model
is called with.

Spacing strings, as the reference's `timestep_respacing`:

- `ddimN`: the fixed integer stride of the DDIM paper (Song et al., 2021): timesteps
  0, k, 2k, ... for the one stride k that gives exactly N of them (`ddim500`: 0, 2, ..., 998);
- `N` or `N1,N2,...`: the process cut into equal sections, each spaced evenly into Ni steps
  rounded to integers, first and last timestep of each section included;
- empty: every training timestep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from a2p.diffusion.schedule import NoiseSchedule, schedule_from_betas
from a2p.errors import ConfigError

DDIM_PREFIX = "ddim"


def _ddim_stride(num_steps: int, count: int, spec: str) -> list[int]:
    for stride in range(1, num_steps + 1):
        if len(range(0, num_steps, stride)) == count:
            return list(range(0, num_steps, stride))
    raise ConfigError(
        f"respacing {spec!r}: no integer stride gives exactly {count} of {num_steps} steps; "
        f"use '{count}' for evenly rounded spacing"
    )


def _sections(num_steps: int, counts: Sequence[int], spec: str) -> list[int]:
    size, extra = divmod(num_steps, len(counts))
    start = 0
    steps: list[int] = []
    for index, count in enumerate(counts):
        section = size + (1 if index < extra else 0)
        if not 1 <= count <= section:
            raise ConfigError(f"respacing {spec!r}: cannot take {count} steps from a section of {section}")
        stride = (section - 1) / (count - 1) if count > 1 else 0.0
        steps.extend(start + round(k * stride) for k in range(count))
        start += section
    return steps


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """The sorted training timesteps that the spacing `spec` keeps out of `num_steps`."""
    spec = spec.strip()
    try:
        if not spec:
            return list(range(num_steps))
        if spec.startswith(DDIM_PREFIX):
            count = int(spec[len(DDIM_PREFIX) :])
            if not 1 <= count <= num_steps:
                raise ConfigError(f"respacing {spec!r}: needs between 1 and {num_steps} steps")
            return _ddim_stride(num_steps, count, spec)
        counts = [int(part) for part in spec.split(",")]
    except ValueError as error:
        raise ConfigError(
            f"respacing {spec!r} is not 'ddimN', 'N', 'N1,N2,...' or empty (every step)"
        ) from error
    return sorted(set(_sections(num_steps, counts, spec)))


def respace(schedule: NoiseSchedule, keep: Sequence[int]) -> NoiseSchedule:
    """The process that visits only the indices `keep` of `schedule`, betas recomputed.

    alpha_bar at the kept indices is unchanged; `timesteps` maps to the original training steps.
    """
    indices = sorted(set(keep))
    if not indices or indices[0] < 0 or indices[-1] >= len(schedule):
        raise ValueError(f"respacing indices must lie in [0, {len(schedule)}), got {list(keep)[:8]}...")
    index = torch.tensor(indices, device=schedule.device)
    alphas_cumprod = schedule.alphas_cumprod[index]
    previous = torch.cat((alphas_cumprod.new_ones(1), alphas_cumprod[:-1]))
    return schedule_from_betas(1 - alphas_cumprod / previous, schedule.timesteps[index])


def respaced_schedule(schedule: NoiseSchedule, spec: str) -> NoiseSchedule:
    """`schedule` respaced by a spacing string such as `ddim500`, `ddim25` or `50`."""
    return respace(schedule, space_timesteps(len(schedule), spec))
