"""Parallel-in-time DDIM: Picard iterations over a sliding window of steps.

Shih et al., 2023, "Parallel Sampling of Diffusion Models" (ParaDiGMS), Algorithm 1. Deterministic
DDIM is a fixed-point problem over the whole trajectory: with d_i(x) = (c_x[i] - 1) x + c_x0[i]
model(x, t_i) (the step of `a2p.diffusion.samplers`, written as a drift),

    x_{i+1} = x_0 + sum_{j <= i} d_j(x_j).

A Picard iteration evaluates the drifts of a window of `window` steps at the current guesses in
ONE batched model call, then updates every guess in the window at once by the cumulative sum.
The window slides past the leading steps whose guesses moved less than `tolerance` (relative to
the noise level of the step: ||change||^2 / dim <= tolerance^2 * (1 - alpha_bar)), so the
number of sequential model calls ("rounds") falls below the number of steps while each call
batches up to `window` steps. That trades total compute for latency: it pays off where one batch
of `window` steps costs about as much as one step (a GPU with room to spare), not on a CPU.
With `window` 1 it is sequential DDIM exactly; a converged result equals it within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from a2p.diffusion.guidance import Model
from a2p.diffusion.samplers import ddim_coefficients
from a2p.diffusion.schedule import NoiseSchedule


@dataclass
class PicardStats:
    """What a parallel sampling run did."""

    steps: int
    """DDIM steps of the schedule (the sequential model calls plain DDIM makes)."""
    rounds: int = 0
    """Sequential (batched) model calls made."""
    step_evaluations: int = 0
    """Steps evaluated over all rounds (the total compute, in steps)."""


@torch.no_grad()
def picard_ddim(
    model: Model,
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    window: int = 16,
    tolerance: float = 1e-3,
    stats: PicardStats | None = None,
) -> Tensor:
    """Deterministic DDIM from x_T (B, ...) by sliding-window Picard iterations; float32 x_0."""
    if window < 1 or tolerance <= 0:
        raise ValueError(f"need window >= 1 and tolerance > 0, got {window} and {tolerance}")
    device, batch = x_T.device, x_T.shape[0]
    c = ddim_coefficients(schedule).to(device)
    steps = len(c)
    stats = stats if stats is not None else PicardStats(steps)
    stats.steps = steps
    timesteps = schedule.timesteps.flip(0).to(device)  # (N,) descending
    # noise level of the state each step produces; floored so the last steps (alpha_bar -> 1) converge
    level = (1 - schedule.alphas_cumprod_prev.flip(0).to(device, torch.float32)).clamp(min=1e-4)
    shape = (1,) * (x_T.dim() - 1)

    guesses = x_T.float().unsqueeze(0).repeat(steps + 1, *([1] * x_T.dim()))  # (N + 1, B, ...) x_0..x_N
    start = 0
    while start < steps:
        end = min(start + window, steps)
        k = end - start
        states = guesses[start:end]  # (k, B, ...)
        t = timesteps[start:end].repeat_interleave(batch)  # (k * B,)
        x0 = model(states.flatten(0, 1), t).float().unflatten(0, (k, batch))
        drift = (c.x[start:end] - 1).view(k, 1, *shape) * states + c.x0[start:end].view(k, 1, *shape) * x0
        new = guesses[start] + drift.cumsum(0)  # (k, B, ...) guesses of x_{start+1..end}
        change = (new - guesses[start + 1 : end + 1]).pow(2).flatten(2).mean(-1).amax(-1)  # (k,)
        guesses[start + 1 : end + 1] = new
        stats.rounds += 1
        stats.step_evaluations += k
        unconverged = torch.nonzero(change > tolerance**2 * level[start:end]).flatten()
        # slide past the converged leading steps; the first step of a window is always exact
        advance = k if unconverged.numel() == 0 else max(int(unconverged[0]), 1)
        previous_end = end
        start += advance
        stretch = min(start + window, steps)
        if stretch > previous_end:  # steps entering the window start from the latest guess
            guesses[previous_end + 1 : stretch + 1] = guesses[previous_end]
    return guesses[steps]
