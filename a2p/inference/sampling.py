"""Sampling one clip's motion from a trained denoiser, the fast way and the reference's way.

The fast path (`sample_motion`) encodes the clip's condition once, then runs every denoising step
as ONE forward over repetitions x (conditional + unconditional) rows. Each repetition draws its
noise from its own generator, seeded from (clip seed, repetition), so a row's result does not
depend on what it was batched with or on how many devices ran the job.

`sample_motion_reference` is the reference's loop for comparison (benchmarks, equivalence tests):
repetitions one after another, the condition re-encoded inside every step, conditional and
unconditional passes separate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from a2p.diffusion import (
    NUM_TRAIN_STEPS,
    Model,
    NoiseSchedule,
    cosine_schedule,
    guided_model,
    randn,
    respaced_schedule,
    sample,
)
from a2p.diffusion.parallel import picard_ddim
from a2p.errors import ConfigError
from a2p.inference.windows import AllReduce, WindowedDenoiser, WindowPlan
from a2p.models.denoiser import Condition, Denoiser

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


@torch.no_grad()
def sample_motion(
    denoiser: Denoiser,
    features: Tensor,
    frames: int,
    *,
    guide: Tensor | None = None,
    reps: int = 1,
    setting: str = "ddim500",
    guidance: float = 1.0,
    seed: int = 0,
    generators: list[torch.Generator] | None = None,
    plan: WindowPlan | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: AllReduce | None = None,
    window_batch: int = 8,
) -> Tensor:
    """(reps, frames, D) motion for one clip: features (1, F, C) at 100 Hz, guide (1 or reps, K, D_guide).

    `generators` (one per repetition) overrides the ones derived from `seed`. With a `plan` of
    several windows the clip is denoised as overlapping windows (`a2p.inference.windows`), which
    `rank` of `world_size` share through `all_reduce`.
    """
    device = features.device
    parsed, schedule = setting_schedule(setting, device)
    generators = generators or repetition_generators(seed, reps, device)
    shape = (reps, frames, denoiser.config.motion_dim)
    if plan is not None and plan.count > 1:
        if plan.frames != frames:
            raise ValueError(f"the window plan covers {plan.frames} frames, the clip has {frames}")
        condition = encode_windows(denoiser, features, guide, plan, reps, window_batch)
        denoise = WindowedDenoiser(
            denoiser, condition, plan, reps, rank=rank, world_size=world_size, all_reduce=all_reduce,
            window_batch=window_batch,
        )  # fmt: skip
        model = guided_model(denoise, guidance, batched=True)
        out = run_setting(model, schedule, shape, parsed, generators, device)
        return denoise.gather(out)
    model = clip_model(denoiser, features, guide, reps, guidance)
    return run_setting(model, schedule, shape, parsed, generators, device)


def clip_model(
    denoiser: Denoiser, features: Tensor, guide: Tensor | None, reps: int, guidance: float
) -> Model:
    """The guided `model(x_t, t)` of one clip: its condition encoded once, for `reps` repetitions.

    x_t holds the repetitions, or k stacked copies of them (parallel-in-time sampling evaluates k
    steps in one call); the condition's rows are tiled to match.
    """
    if guide is not None and guide.shape[0] == reps > 1:
        # one guide per repetition (keyframes sampled per repetition): encode all rows once
        condition = denoiser.encode_condition(features.expand(reps, *features.shape[1:]), guide)
    else:
        condition = denoiser.encode_condition(features, guide)  # once per clip
        condition = condition.map(lambda x: x.expand(reps, *x.shape[1:]))
    if guidance != 1.0:
        condition = denoiser.expand_for_cfg(condition)  # (2 reps) rows: conditional first
    groups = 2 if guidance != 1.0 else 1  # [conditional rows; unconditional rows]
    tiled: dict[int, Condition] = {condition.batch_size: condition}

    def denoise(x_t: Tensor, t: Tensor, keep_mask: Tensor) -> Tensor:
        # keep_mask is implied by the row order of the expanded condition; k stacked steps of
        # each group need each group's rows tiled k times
        if x_t.shape[0] not in tiled:
            k = x_t.shape[0] // condition.batch_size
            parts = condition.map(lambda x: x.unflatten(0, (groups, -1)))
            tiled[x_t.shape[0]] = parts.map(lambda x: x.repeat_interleave(k, dim=0).flatten(0, 1))
        return denoiser(x_t, t, tiled[x_t.shape[0]])

    return guided_model(denoise, guidance, batched=True)


def run_setting(
    model: Model,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    setting: SamplerSetting,
    generators: list[torch.Generator],
    device: torch.device,
) -> Tensor:
    """Sample `shape` with the setting's sampler, from noise drawn by one generator per row."""
    if setting.sampler == "picard_ddim":
        noise = randn(shape, generators, device)
        return picard_ddim(model, schedule, noise, window=PICARD_WINDOW, tolerance=PICARD_TOLERANCE)
    return sample(model, schedule, shape, sampler=setting.sampler, generator=generators, device=device)


def encode_windows(
    denoiser: Denoiser, features: Tensor, guide: Tensor | None, plan: WindowPlan, reps: int, batch: int
) -> Condition:
    """The condition of every window (rows i), or of every (repetition, window) (rows r * count + i)
    when each repetition has its own guide; encoded `batch` rows at a time, once per clip."""
    audio = plan.slice_features(features)  # (count, F_w, C)
    keyframes = None
    if guide is not None:
        keyframes = plan.slice_keyframes(guide.expand(reps, *guide.shape[1:]))  # (reps * count, K_w, D)
        audio = audio.repeat(reps, 1, 1)
    parts = [
        denoiser.encode_condition(
            audio[i : i + batch], None if keyframes is None else keyframes[i : i + batch]
        )
        for i in range(0, audio.shape[0], batch)
    ]
    return Condition.cat(parts)


@torch.no_grad()
def sample_motion_reference(
    denoiser: Denoiser,
    featurize,
    audio: Tensor,
    frames: int,
    *,
    guide: Tensor | None = None,
    reps: int = 1,
    setting: str = "ddim500",
    guidance: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """The reference's loop: repetitions in turn, featurize + encode inside every step, two passes."""
    device = audio.device
    parsed, schedule = setting_schedule(setting, device)
    sequential = "ddim" if parsed.sampler == "picard_ddim" else parsed.sampler
    outputs = []
    for generator in repetition_generators(seed, reps, device):

        def denoise(x_t: Tensor, t: Tensor, keep_mask: Tensor) -> Tensor:
            features = featurize(audio)
            keep = keep_mask[:1].expand(x_t.shape[0])
            return denoiser(x_t, t, denoiser.encode_condition(features, guide, keep))

        model = guided_model(denoise, guidance, batched=False)
        shape = (1, frames, denoiser.config.motion_dim)
        outputs.append(
            # the reference had no parallel-in-time sampler: paraddimN runs as plain DDIM here
            sample(model, schedule, shape, sampler=sequential, generator=[generator], device=device)
        )
    return torch.cat(outputs)
