"""The training objective: x0-prediction MSE on valid frames plus a velocity term.

The network predicts x_0 (the reference's `START_X`), trained with the simple loss of Ho et al.
(2020, eq. 14) on x_0 instead of eps, ||x_0 - x0_pred||^2 (Tevet et al., 2023, "Human Motion
Diffusion Model", eq. 2), and for the body with the velocity loss of Tevet et al. (2023, eq. 5)
weighted by lambda_vel. Each loss is a mean over the
valid frames of one sample, so per-sample values can be logged per timestep quartile. No
variational-bound term is computed: it is not trained on and would cost a second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from a2p.diffusion.schedule import NoiseSchedule, q_sample

TIMESTEP_BINS = 4
"""Loss logging groups timesteps into quartiles, as the reference's `log_loss_dict`."""


@dataclass(frozen=True)
class DiffusionLoss:
    """Per-sample loss terms, each (B,) float32; `loss` = `mse` + lambda_vel * `vel`."""

    loss: Tensor
    mse: Tensor
    vel: Tensor

    def terms(self) -> dict[str, Tensor]:
        """The terms by name, for logging."""
        return {"loss": self.loss, "mse": self.mse, "vel": self.vel}


def sample_timesteps(
    batch_size: int,
    num_steps: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B,) long timesteps drawn uniformly from [0, num_steps) (Ho et al., 2020, Algorithm 1)."""
    return torch.randint(0, num_steps, (batch_size,), device=device, generator=generator)


def _masked_mean(error: Tensor, valid: Tensor) -> Tensor:
    """Mean of squared error (B, T, D) over the valid frames (B, T) of each sample, (B,)."""
    # where (not a product) so NaNs at masked frames neither leak into the loss nor the gradient
    error = torch.where(valid[..., None], error, torch.zeros((), device=error.device))
    frames = valid.sum(dim=1).clamp(min=1)  # (B,)
    return error.square().sum(dim=(1, 2)) / (frames * error.shape[-1])


def diffusion_loss(x0_pred: Tensor, x0: Tensor, valid: Tensor, lambda_vel: float = 0.0) -> DiffusionLoss:
    """Masked x0 MSE plus lambda_vel * MSE of frame-to-frame differences, per sample.

    x0_pred and x0 (B, T, D); valid (B, T) bool or 0/1, False at padding and at frames whose
    target is missing (face codes). The velocity term compares x_{k+1} - x_k of prediction and
    target on pairs of frames that are both valid. A sample with no valid frame has zero loss.
    """
    if x0_pred.shape != x0.shape or x0.ndim != 3:
        raise ValueError(f"x0_pred {tuple(x0_pred.shape)} and x0 {tuple(x0.shape)} must both be (B, T, D)")
    if valid.shape != x0.shape[:2]:
        raise ValueError(f"valid mask {tuple(valid.shape)} must be (B, T) = {tuple(x0.shape[:2])}")
    valid = valid != 0
    error = x0_pred.float() - x0.float()  # (B, T, D)
    mse = _masked_mean(error, valid)
    if lambda_vel:
        vel = _masked_mean(error[:, 1:] - error[:, :-1], valid[:, 1:] & valid[:, :-1])
    else:
        vel = torch.zeros_like(mse)
    return DiffusionLoss(loss=mse + lambda_vel * vel, mse=mse, vel=vel)


def training_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    valid: Tensor,
    t: Tensor,
    *,
    lambda_vel: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DiffusionLoss:
    """Noise x0 (B, T, D) to x_t at timesteps t (B,), predict x0 with model(x_t, t), score it.

    `model` closes over the conditioning (and its classifier-free dropout); `noise` defaults to
    a standard normal draw from `generator`.
    """
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    return diffusion_loss(model(x_t, t), x0, valid, lambda_vel)


def loss_by_quartile(values: Tensor, t: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
    """Sums and counts, each (4,), of per-sample values (B,) grouped by timestep quartile.

    Device-resident (no host sync), so a trainer can accumulate them and divide at log time.
    """
    bins = (t * TIMESTEP_BINS // num_steps).clamp(0, TIMESTEP_BINS - 1)
    sums = torch.zeros(TIMESTEP_BINS, device=values.device).index_add_(0, bins, values.detach().float())
    counts = torch.zeros(TIMESTEP_BINS, device=values.device).index_add_(
        0, bins, torch.ones_like(values, dtype=torch.float32)
    )
    return sums, counts
