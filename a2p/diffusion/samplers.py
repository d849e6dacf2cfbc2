"""Samplers for an x0-predicting model: DDIM (with eta), ancestral, DPM-Solver++(2M).

Each sampler is a table of per-step coefficients computed before the loop, on the schedule, in
float64, then moved once to the sample's device in float32 (float64 for a float64 x_T); the loop is then a fixed linear update

    x_{i+1} = c_x[i] * x_i + c_x0[i] * x0_i + c_prev[i] * x0_{i-1} + c_noise[i] * z_i,

with x0_i = model(x_i, t_i) the model's prediction at the i-th timestep (in descending order), so
no step reads a number back to the host. Every schedule ends at alpha_bar_prev = 1, where all
three samplers return the last x0 prediction, as the reference's `ddim_sample_loop` does.

The model is `model(x_t, t) -> x0`: x_t (B, ...) float32, t (B,) long *original* training
timesteps (`NoiseSchedule.timesteps`), whatever the respacing; its output may be bf16, the
update runs in float32. Noise comes from one `torch.Generator`, or from one generator per batch
row so that a row's sample does not depend on the rows batched with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from a2p.diffusion.guidance import Model
from a2p.diffusion.schedule import NoiseSchedule
from a2p.errors import ConfigError

logger = logging.getLogger(__name__)

SamplerName = Literal["ddim", "ancestral", "dpmpp_2m"]
"""DDIM (eta 0 deterministic, 1 ancestral-equivalent), DDPM ancestral, DPM-Solver++(2M)."""

SAMPLERS: tuple[str, ...] = get_args(SamplerName)

StepHook = Callable[[Tensor, int], Tensor | None]
"""on_step(x, i) after step i with the new state x (B, ...); returns a replacement x or None."""

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, one per batch row, or None for the global generator."""


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step coefficients of the linear update, each (N,) float, in sampling order.

    `x0_prev` is None for one-step methods, `noise` None for deterministic ones.
    """

    x: Tensor
    x0: Tensor
    x0_prev: Tensor | None = None
    noise: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> StepCoefficients:
        """These coefficients as `dtype` (float32) on `device`."""

        def move(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.to(device, dtype)

        return StepCoefficients(move(self.x), move(self.x0), move(self.x0_prev), move(self.noise))


def ddim_coefficients(schedule: NoiseSchedule, eta: float = 0.0) -> StepCoefficients:
    """DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models"), eq. 12 with eq. 16's sigma.

    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, eps = (x - sqrt(a) x0) /
    sqrt(1 - a), sigma = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev). eta = 0 is the
    deterministic DDIM, eta = 1 gives sigma^2 = beta~ and the same update as ancestral sampling.
    """
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"DDIM eta must lie in [0, 1], got {eta}")
    a = schedule.alphas_cumprod.flip(0)
    a_prev = schedule.alphas_cumprod_prev.flip(0)
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    eps_scale = (1 - a_prev - sigma**2).clamp(min=0).sqrt()
    x = eps_scale / (1 - a).sqrt()
    return StepCoefficients(x=x, x0=a_prev.sqrt() - x * a.sqrt(), noise=sigma if eta > 0 else None)


def ancestral_coefficients(schedule: NoiseSchedule) -> StepCoefficients:
    """Ancestral sampling from p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_pred) (Ho et al., 2020, eq. 6-7).

    Fixed-small variance beta~_t (clipped log at t = 0, as improved-diffusion); no noise is added
    at the last step (the reference's `nonzero_mask`).
    """
    noise = (0.5 * schedule.posterior_log_variance_clipped).exp().flip(0)
    noise[-1] = 0.0
    return StepCoefficients(
        x=schedule.posterior_mean_coef2.flip(0), x0=schedule.posterior_mean_coef1.flip(0), noise=noise
    )


def dpm_solver_2m_coefficients(schedule: NoiseSchedule) -> StepCoefficients:
    """DPM-Solver++(2M) in data prediction (Lu et al., 2022, "DPM-Solver++", Algorithm 2).

    With alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma), h_i = lambda_{i+1} -
    lambda_i and r_i = h_{i-1} / h_i, step i goes
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D_i, with
    D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1}. The first step is first order (D_0 = x0_0,
    which is DDIM); so is the step into the last timestep ("lower order final" of the authors'
    code): respaced grids end at t = 0, whose log-SNR jumps far beyond its neighbours', and the
    extrapolation weight 1 / (2 r) there would amplify the model's error. The last step, into
    alpha_bar = 1, returns the x0 prediction itself.
    """
    a = schedule.alphas_cumprod.flip(0)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    lam = alpha.log() - sigma.log()
    steps = len(schedule)
    x = torch.zeros_like(a)
    x0 = torch.zeros_like(a)
    x0_prev = torch.zeros_like(a)
    x0[-1] = 1.0
    if steps > 1:
        h = lam[1:] - lam[:-1]  # (N - 1,)
        phi = -alpha[1:] * torch.expm1(-h)  # weight of D_i
        x[:-1] = sigma[1:] / sigma[:-1]
        x0[:-1] = phi
        inv_2r = h[1:] / (2 * h[:-1])  # 1 / (2 r_i) for steps i >= 1
        inv_2r[-1:] = 0.0  # lower order final
        x0[1:-1] = phi[1:] * (1 + inv_2r)
        x0_prev[1:-1] = -phi[1:] * inv_2r
    return StepCoefficients(x=x, x0=x0, x0_prev=x0_prev)


def randn(shape: Sequence[int], generator: Generators = None, device: torch.device | str = "cpu") -> Tensor:
    """Standard normal float32 noise of `shape`; one generator per row draws row by row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device) for g in generator])


@torch.no_grad()
def run_sampler(
    model: Model,
    schedule: NoiseSchedule,
    coefficients: StepCoefficients,
    x_T: Tensor,
    generator: Generators = None,
    on_step: StepHook | None = None,
) -> Tensor:
    """Run the linear update of `coefficients` from x_T (B, ...) down the schedule -> x_0.

    The state is float32, or float64 when x_T is (equivalence tests against the reference).
    """
    steps = len(coefficients)
    if steps != len(schedule):
        raise ValueError(f"{steps} coefficients for a schedule of {len(schedule)} steps")
    device = x_T.device
    batch = x_T.shape[0]
    dtype = torch.float64 if x_T.dtype == torch.float64 else torch.float32
    c = coefficients.to(device, dtype)
    timesteps = schedule.timesteps.flip(0).to(device)  # (N,) descending
    t_rows = timesteps[:, None].expand(steps, batch).contiguous()  # (N, B)

    x = x_T.to(dtype)
    x0_prev: Tensor | None = None
    for i in range(steps):
        x0 = model(x, t_rows[i]).to(dtype)
        update = c.x[i] * x + c.x0[i] * x0
        if c.x0_prev is not None and x0_prev is not None:
            update = update + c.x0_prev[i] * x0_prev
        if c.noise is not None and i < steps - 1:
            update = update + c.noise[i] * randn(x.shape, generator, device).to(dtype)
        x = update
        if on_step is not None:
            replaced = on_step(x, i)
            if replaced is not None:
                x = replaced.to(dtype)
        x0_prev = x0
    return x


def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    on_step: StepHook | None = None,
) -> Tensor:
    """DDIM from x_T (B, ...) (Song et al., 2021, eq. 12); eta > 0 draws noise from `generator`."""
    return run_sampler(model, schedule, ddim_coefficients(schedule, eta), x_T, generator, on_step)


def ancestral_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    generator: Generators = None,
    on_step: StepHook | None = None,
) -> Tensor:
    """Ancestral sampling from x_T (B, ...) with fixed-small variance (Ho et al., 2020, Algorithm 2)."""
    return run_sampler(model, schedule, ancestral_coefficients(schedule), x_T, generator, on_step)


def dpm_solver_2m_sample(
    model: Model, schedule: NoiseSchedule, x_T: Tensor, *, on_step: StepHook | None = None
) -> Tensor:
    """DPM-Solver++(2M) from x_T (B, ...) (Lu et al., 2022, Algorithm 2); good in 15-25 steps."""
    return run_sampler(model, schedule, dpm_solver_2m_coefficients(schedule), x_T, None, on_step)


def sampler_coefficients(schedule: NoiseSchedule, sampler: str, eta: float = 0.0) -> StepCoefficients:
    """The coefficient table of the sampler named `sampler` (one of `SAMPLERS`)."""
    if sampler == "ddim":
        return ddim_coefficients(schedule, eta)
    if sampler == "ancestral":
        return ancestral_coefficients(schedule)
    if sampler == "dpmpp_2m":
        return dpm_solver_2m_coefficients(schedule)
    raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: Sequence[int] | None = None,
    *,
    sampler: str = "ddim",
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: Generators = None,
    device: torch.device | str | None = None,
    on_step: StepHook | None = None,
) -> Tensor:
    """Sample x_0 of `shape` (B, T, D) with the named sampler, starting from `noise` if given.

    Without `noise`, x_T is drawn from `generator` on `device` (default: the generator's device,
    else CPU); the same generator(s) supply the noise of stochastic samplers. For no host sync
    in the loop, put the schedule on the sample's device first (`schedule.to(device)`).
    """
    coefficients = sampler_coefficients(schedule, sampler, eta)
    if noise is None:
        if shape is None:
            raise ValueError("sample needs a shape or an initial noise tensor")
        if device is None:
            first = generator if isinstance(generator, torch.Generator) else (generator or [None])[0]
            device = first.device if first is not None else "cpu"
        noise = randn(shape, generator, device)
    elif shape is not None and tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise {tuple(noise.shape)} does not match shape {tuple(shape)}")
    logger.debug("sampling %s with %s over %d steps", tuple(noise.shape), sampler, len(schedule))
    return run_sampler(model, schedule, coefficients, noise, generator, on_step)
