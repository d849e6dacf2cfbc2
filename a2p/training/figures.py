"""Images for TensorBoard drawn with tensors alone: real vs. generated motion curves."""

from __future__ import annotations

import torch
from torch import Tensor

REAL_RGB = (0.2, 0.4, 1.0)
GENERATED_RGB = (1.0, 0.35, 0.1)


def motion_figure(real: Tensor, generated: Tensor, channels: int = 4, height: int = 48) -> Tensor:
    """A (3, channels * height, T) float image in [0, 1]: one panel per channel, real in blue, generated in orange.

    real, generated: (T, D). The first `channels` channels are drawn, each panel scaled to the
    range of its real curve (so a generated curve that leaves it is clipped at the panel's edge).
    """
    frames = real.shape[0]
    image = torch.ones(3, channels * height, frames)
    columns = torch.arange(frames)
    for panel in range(min(channels, real.shape[1])):
        low, high = real[:, panel].min(), real[:, panel].max()
        span = (high - low).clamp(min=1e-6)
        for curve, rgb in ((real[:, panel], REAL_RGB), (generated[:, panel], GENERATED_RGB)):
            rows = (
                ((1 - (curve.float().cpu() - low) / span) * (height - 1)).round().long().clamp(0, height - 1)
            )
            for c, value in enumerate(rgb):
                image[c, panel * height + rows, columns] = value
        if panel:
            image[:, panel * height, :] = 0.6  # a grey line between panels
    return image
