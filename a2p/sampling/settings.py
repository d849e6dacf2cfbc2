"""Sampler settings (`ddim500`, `dpmpp25`, `paraddim500`), their respaced schedules and the
per-repetition random generators every sampling path draws its noise from."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from a2p.diffusion import NUM_TRAIN_STEPS, NoiseSchedule, cosine_schedule, respaced_schedule
from a2p.errors import ConfigError

SAMPLER_NAMES = {"ddim": "ddim", "dpmpp": "dpmpp_2m", "paraddim": "picard_ddim"}
_SETTING = re.compile(r"^(ddim|dpmpp|paraddim)(\d+)$")
DEFAULT_SETTING = "ddim100"
"""What `a2p sample` uses unless told: the fastest setting that passed `a2p bench quality` on the
models it was run on (README, Evaluation): on the demo models trained 1000 steps, ddim100 kept
every metric within the reference setting's seed-to-seed spread; DPM-Solver++ did not."""
DEFAULT_SETTING_REASON = "the fastest setting that passed a2p bench quality against ddim500 on the demo models (README: Evaluation)"
PICARD_WINDOW = 16
"""Steps per batched model call of parallel-in-time DDIM (`paraddimN`)."""
PICARD_TOLERANCE = 1e-3
"""Convergence tolerance of parallel-in-time DDIM, relative to each step's noise level."""


@dataclass(frozen=True)
class SamplerSetting:
    """A sampling setting such as `ddim500` (the reference's) or `dpmpp25`."""

    sampler: str
    """Name understood by `a2p.diffusion.sample` (ddim, dpmpp_2m)."""
    steps: int
    """Respaced denoising steps."""
    spacing: str
    """The respacing spec for `respaced_schedule`."""

    @classmethod
    def parse(cls, text: str) -> SamplerSetting:
        match = _SETTING.match(text)
        if not match:
            raise ConfigError(
                f"unknown sampler setting {text!r}: use ddimN (e.g. ddim500), dpmppN (e.g. dpmpp25) "
                "or paraddimN (parallel-in-time DDIM, e.g. paraddim500)"
            )
        family, steps = match.group(1), int(match.group(2))
        if not 1 <= steps <= NUM_TRAIN_STEPS:
            raise ConfigError(f"sampler setting {text!r}: steps must lie in [1, {NUM_TRAIN_STEPS}]")
        # ddimN asks for the reference's stride spacing; other step counts use even spacing
        stride = family in ("ddim", "paraddim") and NUM_TRAIN_STEPS % steps == 0
        spacing = f"ddim{steps}" if stride else str(steps)
        return cls(SAMPLER_NAMES[family], steps, spacing)


def setting_schedule(setting: str, device: torch.device) -> tuple[SamplerSetting, NoiseSchedule]:
    """The parsed setting and its respaced schedule, on `device`."""
    parsed = SamplerSetting.parse(setting)
    base = cosine_schedule(NUM_TRAIN_STEPS, device=device)
    return parsed, respaced_schedule(base, parsed.spacing).to(device)


def repetition_generators(seed: int, reps: int | list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per repetition (`reps` of them, or those numbered in `reps`), seeded from
    (seed, repetition) alone."""
    numbers = range(reps) if isinstance(reps, int) else reps
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + rep) for rep in numbers]
