"""What a job writes per clip: the `.npz` (last, so a clip whose `.npz` exists is complete), the
reference's `results.npy` layout for its renderer, and a figure of the motion; all atomically."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from a2p.constants import FPS, SAMPLE_RATE
from a2p.fileio import write_atomic
from a2p.inference import figures
from a2p.inference.reference_results import reference_results, write_reference_results

logger = logging.getLogger(__name__)

REFERENCE_DIR = "reference"
"""With --results-npy: reference/CLIP/{face,body}_results.npy for the reference's renderer."""


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray | str | int | float]) -> None:
    """One `.npz` written to a temporary name, then renamed into place."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def write_clip(
    out_dir: Path,
    name: str,
    arrays: dict[str, np.ndarray],
    audio: np.ndarray | None,
    fields: dict[str, Any],
    *,
    plot: bool,
    results_npy: bool,
) -> None:
    """A clip's outputs: the figure and `results.npy` when asked for, then `NAME.npz` (arrays + `fields`).

    `fields` records how the clip was made (sampler, seed, source, models, ...); its `sampler`
    titles the figure. Without the clip's audio (sampled from shards) neither figure nor
    `results.npy` can be made, which is said once per clip.
    """
    if (plot or results_npy) and audio is None:
        logger.warning("%s: no audio file to plot or store beside the motion (sampled from shards?)", name)
    elif plot:
        figure = figures.clip_figure(
            audio, arrays["face"], arrays["body"], FPS, SAMPLE_RATE, title=f"{name} — {fields['sampler']}"
        )
        figures.save_figure(figure, out_dir / f"{name}.png")
    if results_npy and audio is not None:
        results = reference_results(arrays["face"], arrays["body"], audio, keyframes=arrays["keyframes"])
        write_reference_results(out_dir / REFERENCE_DIR / name, results)
    write_npz_atomic(out_dir / f"{name}.npz", {**arrays, "fps": FPS, **fields})
