"""A quick-look image of one sampled clip, drawn with numpy alone, and a minimal PNG writer.

`motion_plot` stacks panels that share one time axis, one column per frame (long clips are
binned, each column spanning the min..max of its frames so short peaks stay visible):

1. the audio envelope, RMS per motion frame: this person (blue) and the partner (orange);
2. body speed, ||pose_t - pose_{t-1}|| per frame (frame 0 repeats frame 1);
3. face speed, ||code_t - code_{t-1}|| per frame;
4. the body channels named by `body_channels`, one panel each;

then a strip with a tick every second (a long tick every ten). Repetitions are overlaid in the
colours of `REPETITION_RGB`. Each panel is scaled to the range of what it shows (speeds and the
envelope from zero), so a flat signal draws on the panel's bottom row.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from a2p.constants import AUDIO_CHANNELS, FPS, SAMPLE_RATE
from a2p.errors import A2PError
from a2p.fileio import write_atomic

PANEL_HEIGHT = 64
"""Rows per panel, `PANEL_PADDING` of them kept free at its top and bottom."""
PANEL_PADDING = 3
AXIS_HEIGHT = 8
"""Rows of the time-tick strip under the panels."""
MAX_WIDTH = 2000
"""Widest image: longer clips put several frames into one column."""

BACKGROUND_RGB = (255, 255, 255)
SEPARATOR_RGB = (200, 200, 200)
TICK_RGB = (110, 110, 110)
AUDIO_RGB = ((31, 119, 180), (255, 127, 14))
"""Channel 0 (this person), channel 1 (the partner)."""
REPETITION_RGB = (
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
)
"""Colours of repetitions 0, 1, ... (cycled beyond eight); none is an audio colour."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def panel_rows(panels: int) -> list[slice]:
    """The rows of each panel in a `motion_plot` image with `panels` panels, top to bottom."""
    return [slice(i * (PANEL_HEIGHT + 1), i * (PANEL_HEIGHT + 1) + PANEL_HEIGHT) for i in range(panels)]


def motion_plot(
    audio: np.ndarray,
    face: np.ndarray,
    body: np.ndarray,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
    *,
    body_channels: Sequence[int] = (0, 1, 2),
    max_width: int = MAX_WIDTH,
) -> np.ndarray:
    """An (H, W, 3) uint8 image of one clip: audio envelope over motion panels (see the module doc).

    audio: (S, 2) waveform, S = T * sample_rate / fps; face: (reps, T, 256); body: (reps, T, 104).
    W = min(T, max_width); H = (3 + len(body_channels)) * (PANEL_HEIGHT + 1) + AXIS_HEIGHT.
    """
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

    audio_frames = audio.astype(np.float64).reshape(frames, samples_per_frame, AUDIO_CHANNELS)
    envelope = np.sqrt((audio_frames**2).mean(axis=1))  # (T, 2)
    panels = [
        ([(envelope[:, c], AUDIO_RGB[c]) for c in reversed(range(AUDIO_CHANNELS))], True),
        (_per_repetition(_speed(body)), True),
        (_per_repetition(_speed(face)), True),
        *((_per_repetition(body[:, :, c].astype(np.float64)), False) for c in body_channels),
    ]

    width = min(frames, max_width)
    bounds = np.arange(width + 1) * frames // width  # column c shows frames bounds[c]:bounds[c+1]
    rows = panel_rows(len(panels))
    height = rows[-1].stop + 1 + AXIS_HEIGHT
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    for (curves, from_zero), panel in zip(panels, rows):
        values = np.stack([curve for curve, _ in curves])
        low = 0.0 if from_zero else float(values.min())
        span = float(values.max()) - low
        for curve, rgb in curves:
            top, bottom = _column_extent(curve, bounds)
            _draw_columns(image[panel], _to_row(top, low, span), _to_row(bottom, low, span), rgb)
        image[panel.stop] = SEPARATOR_RGB
    _draw_ticks(image[height - AXIS_HEIGHT :], bounds, fps)
    return image


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG (filter 0 on every row), atomically."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise A2PError(f"a PNG image is a non-empty (H, W, 3) uint8 array, not {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scanlines = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a leading 0 = filter "None"
    scanlines[:, 1:] = image.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _png_chunk(b"IEND", b""),
        )
    )
    write_atomic(path, lambda f: f.write(data))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _speed(motion: np.ndarray) -> np.ndarray:
    """(reps, T, D) -> (reps, T) distance travelled since the previous frame; frame 0 repeats
    frame 1, so that the panel does not open with a drop to zero."""
    speed = np.linalg.norm(np.diff(motion.astype(np.float64), axis=1), axis=2)  # (reps, T - 1)
    if speed.shape[1] == 0:
        return np.zeros(motion.shape[:2])
    return np.concatenate([speed[:, :1], speed], axis=1)


def _per_repetition(curves: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    return [(curve, REPETITION_RGB[r % len(REPETITION_RGB)]) for r, curve in enumerate(curves)]


def _column_extent(curve: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Highest and lowest value per column, each column reaching back to the previous one's last
    frame so that consecutive columns join into a line."""
    high = np.maximum.reduceat(curve, bounds[:-1])
    low = np.minimum.reduceat(curve, bounds[:-1])
    previous = curve[bounds[1:-1] - 1]
    high[1:] = np.maximum(high[1:], previous)
    low[1:] = np.minimum(low[1:], previous)
    return high, low


def _to_row(values: np.ndarray, low: float, span: float) -> np.ndarray:
    """Row inside a panel: high values near the top, `low` (and everything of a flat panel) at the bottom."""
    inner = PANEL_HEIGHT - 2 * PANEL_PADDING
    fraction = (values - low) / span if span > 0 else np.zeros_like(values)
    return PANEL_PADDING + np.rint((1 - fraction) * (inner - 1)).astype(np.int64)


def _draw_columns(panel: np.ndarray, top: np.ndarray, bottom: np.ndarray, rgb: tuple[int, int, int]) -> None:
    """Paint rows top..bottom (inclusive) of every column of `panel` (PANEL_HEIGHT, W, 3)."""
    rows = np.arange(panel.shape[0])[:, None]
    panel[(rows >= top) & (rows <= bottom)] = rgb


def _draw_ticks(strip: np.ndarray, bounds: np.ndarray, fps: int) -> None:
    """A short tick at every second, a full-height one at every tenth, in the column showing it."""
    frames = int(bounds[-1])
    for second in range(0, frames // fps + 1):
        column = int(np.searchsorted(bounds, second * fps, side="right")) - 1
        if column < strip.shape[1]:
            strip[: AXIS_HEIGHT if second % 10 == 0 else AXIS_HEIGHT // 2, column] = TICK_RGB
