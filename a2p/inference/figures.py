"""A quick-look figure of one sampled clip (matplotlib, no pyplot), and saving it as a PNG.

`clip_figure` stacks labelled panels that share one time axis in seconds:

1. the audio envelope, RMS per motion frame, of this person and of the partner;
2. body speed, ||pose_t - pose_{t-1}|| per frame in rad/frame (frame 0 repeats frame 1);
3. face speed, ||code_t - code_{t-1}|| per frame (face codes have no unit);
4. the body channels named by `body_channels`, one panel each, in radians.

Repetitions are overlaid, one colour and one legend entry each. Long clips are drawn from at
most `MAX_POINTS` points per curve: the frames are cut into bins and each bin contributes its
minimum and its maximum, so a one-frame peak stays visible.

The figure is a `matplotlib.figure.Figure` made directly, not through pyplot, so no backend is
chosen and no global figure list grows; `save_figure` renders it with Agg when it writes the PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from a2p.constants import AUDIO_CHANNELS, FPS, SAMPLE_RATE
from a2p.errors import A2PError
from a2p.fileio import write_atomic

MAX_POINTS = 4000
"""Most points drawn per curve; a figure is about 1200 pixels wide, so more would not show."""
DEFAULT_BODY_CHANNELS = (0, 1, 2)
FIGURE_WIDTH_IN = 12.0
PANEL_HEIGHT_IN = 1.5
DPI = 100

SPEAKERS = ("this person", "partner")
"""Audio channel 0 and channel 1, in their legend."""
AUDIO_COLORS = ("tab:blue", "tab:orange")
REPETITION_COLORS = (
    "tab:red",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:cyan",
    "tab:olive",
    "tab:gray",
)
"""Colours of repetitions 0, 1, ... (cycled beyond eight); none is an audio colour."""
LEGEND_ROWS = 4
"""Legend entries per column; more repetitions add columns."""


def clip_figure(
    audio: np.ndarray,
    face: np.ndarray,
    body: np.ndarray,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
    *,
    title: str,
    body_channels: Sequence[int] = DEFAULT_BODY_CHANNELS,
) -> Figure:
    """A figure of one clip: audio envelopes over motion panels (see the module doc), titled `title`.

    audio: (S, 2) waveform, S = T * sample_rate / fps; face: (reps, T, 256); body: (reps, T, 104).
    """
    _check_clip(audio, face, body, fps, sample_rate, body_channels)
    frames = body.shape[1]
    times = np.arange(frames) / fps  # (T,) start of each frame in seconds
    # float32 is exact enough for an envelope and halves the memory of a long clip's audio.
    audio_frames = np.asarray(audio, dtype=np.result_type(audio.dtype, np.float32))
    audio_frames = audio_frames.reshape(frames, sample_rate // fps, AUDIO_CHANNELS)  # (T, S/T, 2)
    envelope = np.sqrt(np.einsum("tsc,tsc->ct", audio_frames, audio_frames) / audio_frames.shape[1])  # (2, T)

    panels: list[tuple[str, np.ndarray, Sequence[str], Sequence[str], bool]] = [
        ("audio RMS\n(full scale)", envelope, SPEAKERS, AUDIO_COLORS, True),
        ("body speed\n(rad/frame)", _speed(body), *_repetitions(body.shape[0]), True),
        ("face speed\n(code units/frame)", _speed(face), *_repetitions(face.shape[0]), True),
        *(
            (f"body channel {c}\n(rad)", body[:, :, c], *_repetitions(body.shape[0]), False)
            for c in body_channels
        ),
    ]
    figure = Figure(
        figsize=(FIGURE_WIDTH_IN, PANEL_HEIGHT_IN * (len(panels) + 0.5)), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, curves, labels, colors, from_zero) in zip(axes, panels):
        x, ys = _decimate(times, curves)
        for y, label, color in zip(ys, labels, colors):
            ax.plot(x, y, color=color, label=label, linewidth=0.8)
        ax.set_ylabel(ylabel)
        if from_zero:
            ax.set_ylim(bottom=0)
        _legend(ax, len(labels))
        ax.grid(alpha=0.3)
    axes[-1].set_xlim(0, frames / fps)
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title)
    return figure


def save_figure(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG at `path` atomically, then clear it so its artists can be freed."""
    try:
        write_atomic(path, lambda f: figure.savefig(f, format="png"))
    finally:
        figure.clear()


def _check_clip(
    audio: np.ndarray,
    face: np.ndarray,
    body: np.ndarray,
    fps: int,
    sample_rate: int,
    body_channels: Sequence[int],
) -> None:
    if face.ndim != 3 or body.ndim != 3 or face.shape[:2] != body.shape[:2] or face.shape[1] == 0:
        raise A2PError(
            f"face {face.shape} and body {body.shape} must be (reps, T, D) with the same reps and T"
        )
    frames = body.shape[1]
    samples_per_frame, remainder = divmod(sample_rate, fps)
    if remainder or audio.shape != (frames * samples_per_frame, AUDIO_CHANNELS):
        raise A2PError(
            f"audio has shape {audio.shape}; expected ({frames * samples_per_frame}, {AUDIO_CHANNELS}) for {frames} frames at {fps} fps and {sample_rate} Hz"
        )
    for name, array in (("audio", audio), ("face", face), ("body", body)):
        if not np.isfinite(array).all():
            raise A2PError(f"{name} holds NaN or Inf; nothing to plot")
    if any(not 0 <= c < body.shape[2] for c in body_channels):
        raise A2PError(f"body_channels {tuple(body_channels)} are not all in [0, {body.shape[2]})")


def _speed(motion: np.ndarray) -> np.ndarray:
    """(reps, T, D) -> (reps, T) distance travelled since the previous frame; frame 0 repeats
    frame 1, so that the panel does not open with a drop to zero."""
    speed = np.linalg.norm(np.diff(motion.astype(np.float64), axis=1), axis=2)  # (reps, T - 1)
    if speed.shape[1] == 0:
        return np.zeros(motion.shape[:2])
    return np.concatenate([speed[:, :1], speed], axis=1)


def _repetitions(reps: int) -> tuple[list[str], list[str]]:
    """Legend labels and colours of repetitions 0..reps-1."""
    return [f"rep {r}" for r in range(reps)], [
        REPETITION_COLORS[r % len(REPETITION_COLORS)] for r in range(reps)
    ]


def _decimate(times: np.ndarray, curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) times and (N, T) curves -> (P,) and (N, P) with P <= MAX_POINTS.

    Up to MAX_POINTS frames pass unchanged; longer curves are cut into MAX_POINTS / 2 bins, each
    drawn as its minimum then its maximum at the bin's first frame, so peaks survive.
    """
    frames = times.shape[0]
    if frames <= MAX_POINTS:
        return times, curves
    starts = np.arange(MAX_POINTS // 2) * frames // (MAX_POINTS // 2)  # first frame of each bin
    low = np.minimum.reduceat(curves, starts, axis=1)
    high = np.maximum.reduceat(curves, starts, axis=1)
    return np.repeat(times[starts], 2), np.stack([low, high], axis=2).reshape(curves.shape[0], -1)


def _legend(ax: Axes, entries: int) -> None:
    """The panel's legend, outside its right edge so that it hides no data."""
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        ncols=math.ceil(entries / LEGEND_ROWS),
        fontsize="small",
        frameon=False,
    )
