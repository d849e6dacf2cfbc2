"""Classifier-free guidance on x0 predictions (Ho & Salimans, 2022, "Classifier-Free Diffusion Guidance").

Ho & Salimans (eq. 6) mix noise predictions, eps~ = (1 + w) eps(x_t, c) - w eps(x_t); with
s = 1 + w this is uncond + s (cond - uncond). For a fixed x_t, eps is an affine function of x0
with the same coefficients in both passes, so mixing x0 predictions is the same guidance; the
reference mixes the x0 outputs of its model this way (`ClassifierFreeSampleModel`).

A guidable denoiser is `denoise(x_t, t, keep_mask) -> x0`, keep_mask (B,) bool: True rows see
their conditioning, False rows the null condition. `guided_model` turns it into the
`model(x_t, t)` the samplers call, in one of two ways:

- batched (the fast path): one call on 2B rows, [x_t; x_t] with keep_mask [True x B; False x B],
  so the network runs once per step at twice the batch;
- two passes (the slow reference path): one call with every row conditioned, one with none.

Both give the same result; `denoise` must treat rows independently and accept either batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GuidableDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""denoise(x_t (B, ...), t (B,) long, keep_mask (B,) bool) -> x0 prediction (B, ...)."""

Model = Callable[[Tensor, Tensor], Tensor]
"""model(x_t (B, ...), t (B,) long original timesteps) -> x0 prediction (B, ...)."""


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float | Tensor) -> Tensor:
    """uncond + scale * (cond - uncond) in float32 (float64 for float64 inputs); scale a number or (B,).

    Ho & Salimans (2022), eq. 6 with scale = 1 + w, applied to x0 predictions.
    """
    dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
    cond, uncond = cond.to(dtype), uncond.to(dtype)
    if isinstance(scale, Tensor):
        scale = scale.to(cond.device, dtype).view(-1, *([1] * (cond.ndim - 1)))
    return uncond + scale * (cond - uncond)


def guided_model(denoise: GuidableDenoiser, scale: float | Tensor, *, batched: bool = True) -> Model:
    """The guided `model(x_t, t)` of a guidable denoiser at guidance `scale` (float or (B,)).

    `batched` runs conditional and unconditional rows as one batch of 2B (fast); False runs two
    passes of B rows (the reference's way). A scale of exactly 1 needs only the conditional pass.
    """
    if not isinstance(scale, Tensor) and scale == 1:

        def conditional(x_t: Tensor, t: Tensor) -> Tensor:
            return denoise(x_t, t, torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device))

        return conditional

    def one_batch(x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]
        keep = torch.arange(2 * batch, device=x_t.device) < batch  # (2B,) conditional rows first
        cond, uncond = denoise(torch.cat((x_t, x_t)), torch.cat((t, t)), keep).chunk(2)
        return cfg_combine(cond, uncond, scale)

    def two_passes(x_t: Tensor, t: Tensor) -> Tensor:
        keep = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
        return cfg_combine(denoise(x_t, t, keep), denoise(x_t, t, ~keep), scale)

    return one_batch if batched else two_passes
