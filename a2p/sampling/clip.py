"""Sampling one clip's motion from a trained denoiser, the fast way.

`sample_motion` encodes the clip's condition once, then runs every denoising step as ONE forward
over repetitions x (conditional + unconditional) rows. Each repetition draws its noise from its own
generator, seeded from (clip seed, repetition), so a row's result does not depend on what it was
batched with or on how many devices ran the job. The reference's way of doing the same is in
`a2p.sampling.reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from a2p.diffusion import Model, NoiseSchedule, guided_model, randn, sample
from a2p.diffusion.parallel import picard_ddim
from a2p.models.denoiser import Condition, Denoiser
from a2p.sampling.settings import (
    PICARD_TOLERANCE,
    PICARD_WINDOW,
    SamplerSetting,
    repetition_generators,
    setting_schedule,
)
from a2p.sampling.windows import AllReduce, WindowedDenoiser, WindowPlan


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
    noise: Tensor | None = None,
    per_window: bool = False,
) -> Tensor:
    """(reps, frames, D) motion for one clip: features (1, F, C) at 100 Hz, guide (1 or reps, K, D_guide).

    `generators` (one per repetition) overrides the ones derived from `seed`; `noise`
    (reps, frames, D), in the diffusion's normalized units, replaces the x_T they would draw. With a `plan` of
    several windows the clip is denoised as overlapping windows (`a2p.sampling.windows`), which
    `rank` of `world_size` share through `all_reduce`; its windows' features are sliced from the
    clip's, or, with `per_window`, `features` (windows, F_w, C) are each window's own.
    """
    device = features.device
    parsed, schedule = setting_schedule(setting, device)
    generators = generators or repetition_generators(seed, reps, device)
    shape = (reps, frames, denoiser.config.motion_dim)
    if plan is not None and plan.count > 1:
        if plan.frames != frames:
            raise ValueError(f"the window plan covers {plan.frames} frames, the clip has {frames}")
        condition = encode_windows(denoiser, features, guide, plan, reps, window_batch, per_window)
        denoise = WindowedDenoiser(
            denoiser, condition, plan, reps, rank=rank, world_size=world_size, all_reduce=all_reduce,
            window_batch=window_batch,
        )  # fmt: skip
        model = guided_model(denoise, guidance, batched=True)
        out = run_setting(model, schedule, shape, parsed, generators, device, noise)
        return denoise.gather(out)
    model = clip_model(denoiser, features, guide, reps, guidance)
    return run_setting(model, schedule, shape, parsed, generators, device, noise)


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
    noise: Tensor | None = None,
) -> Tensor:
    """Sample `shape` with the setting's sampler, from `noise` or noise drawn by one generator per row."""
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"initial noise has shape {tuple(noise.shape)}, the clip needs {tuple(shape)}")
        noise = noise.to(device)
    if setting.sampler == "picard_ddim":
        noise = randn(shape, generators, device) if noise is None else noise
        return picard_ddim(model, schedule, noise, window=PICARD_WINDOW, tolerance=PICARD_TOLERANCE)
    return sample(
        model, schedule, shape, sampler=setting.sampler, noise=noise, generator=generators, device=device
    )


def encode_windows(
    denoiser: Denoiser,
    features: Tensor,
    guide: Tensor | None,
    plan: WindowPlan,
    reps: int,
    batch: int,
    per_window: bool = False,
) -> Condition:
    """The condition of every window (rows i), or of every (repetition, window) (rows r * count + i)
    when each repetition has its own guide; encoded `batch` rows at a time, once per clip.
    `features` are the clip's (1, F, C), or with `per_window` each window's (count, F_w, C)."""
    audio = features if per_window else plan.slice_features(features)  # (count, F_w, C)
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
