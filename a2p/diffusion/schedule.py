"""The Gaussian diffusion process: the cosine noise schedule, q(x_t | x_0) and its posterior.

Notation of Ho et al. (2020, "Denoising Diffusion Probabilistic Models"): betas beta_t,
alpha_bar_t = prod_{s <= t} (1 - beta_s), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
Steps are indexed from 0, so index 0 is the first noising step (the reference's convention).

A `NoiseSchedule` holds float64 tables (float32 on devices without float64); functions gather the
rows of a batch on the device of their input and compute in float32. Move a schedule to the
training device once (`schedule.to(device)`) so that gathering stays on that device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

NUM_TRAIN_STEPS = 1000
"""Diffusion steps of the training process (the reference's `steps`)."""

COSINE_OFFSET = 0.008
"""The offset s of the cosine schedule (Nichol & Dhariwal, 2021, eq. 17)."""

MAX_BETA = 0.999
"""Betas are clipped here so the last steps stay invertible (Nichol & Dhariwal, 2021, sec. 3.2)."""


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-step tables of a (possibly respaced) diffusion process, each (N,).

    `timesteps[i]` is the step of the training process that index i stands for: the model is
    always called with these original timesteps, whatever the spacing.
    """

    timesteps: Tensor
    """(N,) long: original training timestep of each index (arange(N) for the training schedule)."""
    betas: Tensor
    """(N,) beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}."""
    alphas_cumprod: Tensor
    """(N,) alpha_bar_i."""
    alphas_cumprod_prev: Tensor
    """(N,) alpha_bar_{i-1}, with alpha_bar_{-1} = 1."""
    sqrt_alphas_cumprod: Tensor
    """(N,) sqrt(alpha_bar_i): the signal scale of x_t."""
    sqrt_one_minus_alphas_cumprod: Tensor
    """(N,) sqrt(1 - alpha_bar_i): the noise scale of x_t."""
    posterior_variance: Tensor
    """(N,) beta~_i of q(x_{i-1} | x_i, x_0) (Ho et al., 2020, eq. 7); 0 at i = 0."""
    posterior_log_variance_clipped: Tensor
    """(N,) log beta~_i with the zero at i = 0 replaced by beta~_1 (as improved-diffusion)."""
    posterior_mean_coef1: Tensor
    """(N,) weight of x_0 in the posterior mean (Ho et al., 2020, eq. 7)."""
    posterior_mean_coef2: Tensor
    """(N,) weight of x_t in the posterior mean (Ho et al., 2020, eq. 7)."""

    def __len__(self) -> int:
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """This schedule on `device` (float64, or float32 where the device lacks float64)."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        moved = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            moved[field.name] = value.to(device, dtype if value.is_floating_point() else value.dtype)
        return NoiseSchedule(**moved)


def cosine_alpha_bar(u: Tensor, offset: float = COSINE_OFFSET) -> Tensor:
    """f(u) / f(0), f(u) = cos^2(((u + s) / (1 + s)) * pi / 2), for u = t / T in [0, 1].

    Nichol & Dhariwal (2021, "Improved Denoising Diffusion Probabilistic Models"), eq. 17.
    """
    f = torch.cos((u + offset) / (1 + offset) * (math.pi / 2)) ** 2
    f0 = math.cos(offset / (1 + offset) * (math.pi / 2)) ** 2
    return f / f0


def cosine_betas(
    num_steps: int = NUM_TRAIN_STEPS, offset: float = COSINE_OFFSET, max_beta: float = MAX_BETA
) -> Tensor:
    """(num_steps,) float64 betas of the cosine schedule, beta_t = min(1 - a(t+1)/a(t), max_beta).

    a = `cosine_alpha_bar` at u = t / num_steps (Nichol & Dhariwal, 2021, eq. 17 and sec. 3.2).
    """
    if num_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {num_steps}")
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = cosine_alpha_bar(u, offset)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def schedule_from_betas(betas: Tensor, timesteps: Tensor | None = None) -> NoiseSchedule:
    """The tables of the process with these betas (N,); `timesteps` defaults to arange(N).

    Posterior of Ho et al. (2020), eq. 6-7; the log variance is clipped at index 0 as in
    improved-diffusion (Nichol & Dhariwal, 2021), where beta~_0 = 0.
    """
    betas = betas.to(torch.float64)
    if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
    steps = betas.shape[0]
    if timesteps is None:
        timesteps = torch.arange(steps, device=betas.device)
    if timesteps.shape != (steps,):
        raise ValueError(f"{timesteps.shape[0]} timesteps for {steps} betas")

    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    alphas_cumprod_prev = torch.cat((alphas_cumprod.new_ones(1), alphas_cumprod[:-1]))
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    first_log = posterior_variance[1:2] if steps > 1 else betas[:1]
    posterior_log_variance_clipped = torch.cat((first_log, posterior_variance[1:])).log()
    return NoiseSchedule(
        timesteps=timesteps.to(torch.long),
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
        posterior_mean_coef2=(1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
    )


def cosine_schedule(
    num_steps: int = NUM_TRAIN_STEPS, device: torch.device | str | None = None
) -> NoiseSchedule:
    """The training schedule of a2p and the reference: `num_steps` cosine steps, betas <= 0.999."""
    schedule = schedule_from_betas(cosine_betas(num_steps))
    return schedule if device is None else schedule.to(device)


def gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as float32 on like's device, shaped (B, 1, ..., 1) to broadcast against like."""
    rows = values.to(like.device)[t.to(like.device)].to(torch.float32)  # (B,)
    return rows.view(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (Ho et al., 2020, eq. 4), float32.

    x0 and noise (B, ...); t (B,) long indices into the schedule.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match x0 {tuple(x0.shape)}")
    signal = gather(schedule.sqrt_alphas_cumprod, t, x0)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return signal * x0.float() + sigma * noise.float()


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (Ho et al., 2020, eq. 6-7).

    The variance is the fixed-small choice sigma_t^2 = beta~_t the reference samples with;
    variance and log variance come shaped (B, 1, ..., 1).
    """
    mean = gather(schedule.posterior_mean_coef1, t, x_t) * x0.float()
    mean = mean + gather(schedule.posterior_mean_coef2, t, x_t) * x_t.float()
    variance = gather(schedule.posterior_variance, t, x_t)
    log_variance = gather(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance
