"""The paper's motion metrics (Audio2Photoreal, Sec. 5; the reference's `utils/eval.py`), in float64.

Motion is given as chunks: (C, T, D) arrays of C clips of T frames of D channels (the reference
evaluates the test split in 600-frame chunks). For predictions, (R, C, T, D) with R repetitions
(seeds) of every chunk.

- FD_g: Frechet distance between Gaussians fitted to the per-frame vectors of the prediction
  and of the ground truth (static); FD_k: the same on frame-to-frame differences (kinematic);
- Div_g: mean Euclidean distance between random pairs of predicted frames (static diversity);
- Div_k: variance over time of each channel within a chunk, averaged (kinematic diversity);
- variance across repetitions: per element variance over the R repetitions, averaged.

a2p computes FD_g, FD_k and Div_g per repetition and reports their mean and spread. The
reference's script pools instead: every repetition's frames enter one Gaussian (and one set of
Div_g pairs), against the ground truth repeated once per repetition, as its results file holds
it. `pooled_metrics` computes those numbers; since the pooled covariance also holds the spread
between repetitions, they differ from the per-repetition means. Div_k is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2p.errors import DataError

DIVERSITY_PAIRS = 10_000
"""Random frame pairs behind Div_g (as the reference)."""


def _as_chunks(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise DataError(f"{what}: expected (chunks, frames, channels), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: holds NaN or Inf")
    return x


def gaussian_stats(vectors: np.ndarray, what: str = "motion") -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) vectors, with an error when N is too small."""
    vectors = np.asarray(vectors, dtype=np.float64)
    count, dim = vectors.shape
    if count <= dim:
        raise DataError(
            f"{what}: {count} frames are too few for a covariance of width {dim} "
            f"(need more than {dim}); evaluate more or longer clips"
        )
    return vectors.mean(axis=0), np.cov(vectors, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; round-off negatives clipped to 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) (Frechet / FID distance).

    tr((cov1 cov2)^(1/2)) equals the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix cov1^(1/2) cov2 cov1^(1/2), which keeps the computation real (the reference's
    `scipy.linalg.sqrtm` of the non-symmetric product can turn complex).
    """
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def _frames(chunks: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(N, D) frames of (C, T, D) chunks: all of them, or those where mask (C, T) is True."""
    return chunks.reshape(-1, chunks.shape[-1]) if mask is None else chunks[np.asarray(mask, dtype=bool)]


def fd_static(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """FD_g between predicted and ground-truth chunks, both (C, T, D); only frames where mask (C, T) holds."""
    pred, gt = _as_chunks(pred, "prediction"), _as_chunks(gt, "ground truth")
    return frechet_distance(
        *gaussian_stats(_frames(gt, mask), "ground truth"), *gaussian_stats(_frames(pred, mask), "prediction")
    )


def fd_kinematic(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """FD_k: FD_g of frame-to-frame differences within each chunk (between two valid frames)."""
    pred, gt = _as_chunks(pred, "prediction"), _as_chunks(gt, "ground truth")
    pairs = (
        None if mask is None else np.asarray(mask, dtype=bool)[:, 1:] & np.asarray(mask, dtype=bool)[:, :-1]
    )
    return fd_static(np.diff(pred, axis=1), np.diff(gt, axis=1), pairs)


def static_diversity(
    chunks: np.ndarray, pairs: int = DIVERSITY_PAIRS, seed: int = 0, mask: np.ndarray | None = None
) -> float:
    """Div_g: mean distance between `pairs` random pairs of frames (fewer if fewer frames exist)."""
    frames = _frames(_as_chunks(chunks, "motion"), mask)
    count = min(pairs, frames.shape[0])
    if frames.shape[0] < 2:
        raise DataError("motion: static diversity needs at least 2 frames")
    rng = np.random.default_rng(seed)
    first = rng.choice(frames.shape[0], count, replace=False)
    second = rng.choice(frames.shape[0], count, replace=False)
    return float(np.linalg.norm(frames[first] - frames[second], axis=1).mean())


def kinematic_diversity(chunks: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Div_k: variance over time of every channel of every chunk (over its valid frames), averaged."""
    chunks = _as_chunks(chunks, "motion")
    if mask is None:
        return float(chunks.var(axis=1).mean())
    mask = np.asarray(mask, dtype=bool)
    per_chunk = [c[m].var(axis=0).mean() for c, m in zip(chunks, mask) if m.sum() >= 2]
    if not per_chunk:
        raise DataError("motion: kinematic diversity needs a chunk with at least 2 valid frames")
    return float(np.mean(per_chunk))


def variance_across_repetitions(pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance over the R repetitions (axis 0) of (R, C, T, D) predictions, averaged (over valid frames)."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 4 or pred.shape[0] < 2:
        raise DataError(f"need (repetitions >= 2, chunks, frames, channels), got shape {pred.shape}")
    return float(_frames(pred.var(axis=0), mask).mean())


def pooled_metrics(
    pred: np.ndarray, gt: np.ndarray, seed: int = 0, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The reference's pooled FD_g, FD_k, Div_g (utils/eval.py) of (R, C, T, D) predictions against (C, T, D).

    The R x C predicted chunks are taken as one set, in repetition-major order, against the truth
    tiled R times (the reference's results hold one copy of the truth per repetition, which
    scales its covariance by R (N - 1) / (R N - 1) for N frames). Div_g draws its pairs from all
    predicted frames, seeded as `static_diversity`. mask (C, T) applies to every repetition.
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 4:
        raise DataError(f"need (repetitions, chunks, frames, channels) predictions, got shape {pred.shape}")
    reps = pred.shape[0]
    chunks = pred.reshape(-1, *pred.shape[2:])  # (R C, T, D)
    truth = np.concatenate([np.asarray(gt, dtype=np.float64)] * reps)  # (R C, T, D)
    tiled = None if mask is None else np.concatenate([np.asarray(mask, dtype=bool)] * reps)  # (R C, T)
    return {
        "pooled_fd_g": fd_static(chunks, truth, tiled),
        "pooled_fd_k": fd_kinematic(chunks, truth, tiled),
        "pooled_div_g": static_diversity(chunks, seed=seed, mask=tiled),
    }


@dataclass
class Metric:
    """A metric over repetitions: mean and spread (population std) of the per-repetition values."""

    mean: float
    spread: float
    values: list[float]


def motion_metrics(
    pred: np.ndarray, gt: np.ndarray, seed: int = 0, mask: np.ndarray | None = None
) -> dict[str, object]:
    """FD_g, FD_k, Div_g, Div_k per repetition of (R, C, T, D) predictions against (C, T, D) truth.

    mask (C, T): the frames that count (e.g. where the captured face is present); frame
    differences count where both frames do. Returns {metric: Metric} plus the ground truth's own
    diversities, the variance across repetitions, the number of frames behind each value, and
    the reference's pooled FD_g, FD_k, Div_g (`pooled_metrics`: `pooled_fd_g`, ...).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = _as_chunks(gt, "ground truth")
    if pred.ndim != 4 or pred.shape[1:] != gt.shape:
        raise DataError(
            f"predictions {pred.shape} do not match ground truth (R, {', '.join(map(str, gt.shape))})"
        )
    per_rep: dict[str, list[float]] = {"fd_g": [], "fd_k": [], "div_g": [], "div_k": []}
    if mask is not None and np.shape(mask) != gt.shape[:2]:
        raise DataError(f"mask {np.shape(mask)} does not match the chunks {gt.shape[:2]}")
    for rep in pred:
        per_rep["fd_g"].append(fd_static(rep, gt, mask))
        per_rep["fd_k"].append(fd_kinematic(rep, gt, mask))
        per_rep["div_g"].append(static_diversity(rep, seed=seed, mask=mask))
        per_rep["div_k"].append(kinematic_diversity(rep, mask))
    result: dict[str, object] = {
        name: Metric(float(np.mean(v)), float(np.std(v)), [float(x) for x in v])
        for name, v in per_rep.items()
    }
    result["gt_div_g"] = static_diversity(gt, seed=seed, mask=mask)
    result["gt_div_k"] = kinematic_diversity(gt, mask)
    result["var_reps"] = variance_across_repetitions(pred, mask) if pred.shape[0] > 1 else None
    result["repetitions"] = int(pred.shape[0])
    result["frames"] = int(gt.shape[0] * gt.shape[1] if mask is None else np.count_nonzero(mask))
    result.update(pooled_metrics(pred, gt, seed=seed, mask=mask))
    return result
