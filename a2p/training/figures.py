"""Figures for TensorBoard: real vs. generated motion curves of an evaluation window.

The figure is a `matplotlib.figure.Figure` made directly, not through pyplot;
`SummaryWriter.add_figure` renders it with Agg.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from a2p.constants import FPS

REAL_COLOR = "tab:blue"
GENERATED_COLOR = "tab:orange"
FIGURE_WIDTH_IN = 8.0
PANEL_HEIGHT_IN = 1.4
DPI = 100


def motion_figure(
    real: Tensor, generated: Tensor, channels: int = 4, *, title: str = "real vs. generated motion"
) -> Figure:
    """One panel per channel of the first `channels`, real and generated overlaid over time in seconds.

    real, generated: (T, D) motion at `FPS` frames per second.
    """
    shown = min(channels, real.shape[1])
    times = np.arange(real.shape[0]) / FPS  # (T,) seconds
    figure = Figure(figsize=(FIGURE_WIDTH_IN, PANEL_HEIGHT_IN * (shown + 0.5)), dpi=DPI, layout="constrained")
    axes = figure.subplots(shown, 1, sharex=True, squeeze=False)[:, 0]
    for channel, ax in enumerate(axes):
        for curve, label, color in ((real, "real", REAL_COLOR), (generated, "generated", GENERATED_COLOR)):
            ax.plot(
                times, curve[:, channel].detach().float().cpu().numpy(), label=label, color=color, linewidth=1
            )
        ax.set_ylabel(f"channel {channel}")
        ax.grid(alpha=0.3)
    axes[0].legend(
        loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small", frameon=False
    )  # off the data
    axes[-1].set_xlim(0, real.shape[0] / FPS)
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title)
    return figure
