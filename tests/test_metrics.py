"""The paper's metrics against hand-computed values on small arrays."""

import numpy as np
import pytest

from a2p.errors import DataError
from a2p.evaluation.metrics import (
    fd_kinematic,
    fd_static,
    frechet_distance,
    gaussian_stats,
    kinematic_diversity,
    motion_metrics,
    static_diversity,
    variance_across_repetitions,
)


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 200, 6))
    assert fd_static(x, x) == pytest.approx(0.0, abs=1e-8)
    assert fd_kinematic(x, x) == pytest.approx(0.0, abs=1e-8)


def test_shifted_mean_gives_its_squared_norm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 300, 5))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert fd_static(x + shift, x) == pytest.approx(float(shift @ shift), rel=1e-9)
    # a constant shift leaves frame differences alone
    assert fd_kinematic(x + shift, x) == pytest.approx(0.0, abs=1e-8)


def test_closed_form_for_diagonal_gaussians():
    # FD of N(0, diag(a)) and N(0, diag(b)) is sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)


def test_non_commuting_covariances_stay_real_and_symmetric():
    rng = np.random.default_rng(2)
    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = m1 @ m1.T, m2 @ m2.T
    d12 = frechet_distance(np.zeros(4), c1, np.ones(4), c2)
    d21 = frechet_distance(np.ones(4), c2, np.zeros(4), c1)
    assert np.isreal(d12) and d12 > 0
    assert d12 == pytest.approx(d21, rel=1e-9)
    # singular (rank-deficient) covariances are fine too
    v = rng.normal(size=(4, 1))
    assert frechet_distance(np.zeros(4), v @ v.T, np.zeros(4), v @ v.T) == pytest.approx(0.0, abs=1e-8)


def test_diversity_of_constant_motion_is_zero():
    const = np.ones((2, 50, 3)) * np.array([1.0, 2.0, 3.0])
    assert static_diversity(const) == 0.0
    assert kinematic_diversity(const) == 0.0


def test_diversity_hand_values():
    # two frames at distance 5, alternating: every random pair is either equal or 5 apart
    frames = np.array([[0.0, 0.0], [3.0, 4.0]] * 50)[None]
    assert 0.0 < static_diversity(frames) < 5.0
    # kinematic diversity of a channel alternating between 0 and 2 is its variance, 1
    alt = np.tile([0.0, 2.0], 20)[None, :, None]
    assert kinematic_diversity(alt) == pytest.approx(1.0)


def test_variance_across_repetitions():
    base = np.zeros((1, 10, 2))
    pred = np.stack([base - 1.0, base + 1.0])
    assert variance_across_repetitions(pred) == pytest.approx(1.0)


def test_too_few_frames_for_covariance_is_a_clear_error():
    with pytest.raises(DataError, match="too few for a covariance of width 8"):
        fd_static(np.zeros((1, 5, 8)), np.zeros((1, 5, 8)))


def test_motion_metrics_reports_mean_and_spread():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(3, 100, 4))
    pred = np.stack([gt + 0.0, gt + 1.0])
    out = motion_metrics(pred, gt)
    assert out["fd_g"].values == pytest.approx([0.0, 4.0], abs=1e-8)
    assert out["fd_g"].mean == pytest.approx(2.0) and out["fd_g"].spread == pytest.approx(2.0)
    assert out["frames"] == 300 and out["repetitions"] == 2
    assert out["var_reps"] == pytest.approx(0.25)
    with pytest.raises(DataError, match="do not match"):
        motion_metrics(pred[:, :2], gt)


def test_masked_frames_never_count():
    rng = np.random.default_rng(5)
    gt = rng.standard_normal((3, 80, 4))
    pred = rng.standard_normal((2, 3, 80, 4)) + 0.3
    mask = np.ones((3, 80), dtype=bool)
    full = motion_metrics(pred, gt)
    assert motion_metrics(pred, gt, mask=mask)["fd_g"].values == full["fd_g"].values  # all valid: the same
    mask[1, 20:35] = False  # a gap: garbage there must change nothing
    spoiled_gt, spoiled_pred = gt.copy(), pred.copy()
    spoiled_gt[1, 20:35] = 1e3
    spoiled_pred[:, 1, 20:35] = -1e3
    clean = motion_metrics(pred, gt, mask=mask)
    spoiled = motion_metrics(spoiled_pred, spoiled_gt, mask=mask)
    for name in ("fd_g", "fd_k", "div_g", "div_k"):
        np.testing.assert_allclose(spoiled[name].values, clean[name].values, rtol=1e-9)
    assert spoiled["frames"] == 3 * 80 - 15
    # FD_g over the valid frames is the FD of exactly those frames
    valid = lambda x: x[mask]  # noqa: E731
    expected = frechet_distance(*gaussian_stats(valid(gt)), *gaussian_stats(valid(pred[0])))
    assert clean["fd_g"].values[0] == pytest.approx(expected, rel=1e-12)


def _reference_pooled(pred: np.ndarray, gt: np.ndarray, seed: int) -> dict[str, float]:
    """FD_g, FD_k, Div_g as the reference's utils/eval.py computes them (written anew from reading it).

    Its results hold R copies of the (C, D, T) chunks, truth included; `transpose((0, 1, 3, 2))
    .reshape(-1, D)` makes one (R C T, D) set of frames of each; the covariances are `np.cov`
    (rowvar=False); the FD's tr sqrt(S1 S2) is taken here as the sum of the square roots of the
    eigenvalues of S1 S2 (what `scipy.linalg.sqrtm`'s trace equals); Div_g is the mean distance of
    10,000 pairs drawn without replacement from more than 10,000 frames (seeded here as a2p draws).
    """
    reps, dim = pred.shape[0], pred.shape[-1]
    gt_all = np.stack([gt] * reps)  # (R, C, T, D)

    def fid(a, b):
        mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
        return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)

    frames, gt_frames = pred.reshape(-1, dim), gt_all.reshape(-1, dim)
    motion, gt_motion = np.diff(pred, axis=2).reshape(-1, dim), np.diff(gt_all, axis=2).reshape(-1, dim)
    assert frames.shape[0] > 10_000
    rng = np.random.default_rng(seed)
    first = rng.choice(frames.shape[0], 10_000, replace=False)
    second = rng.choice(frames.shape[0], 10_000, replace=False)
    return {
        "pooled_fd_g": fid(gt_frames, frames),
        "pooled_fd_k": fid(gt_motion, motion),
        "pooled_div_g": float(np.linalg.norm(frames[first] - frames[second], axis=1).mean()),
    }


def test_pooled_metrics_are_the_references():
    from a2p.evaluation.metrics import pooled_metrics

    rng = np.random.default_rng(7)
    gt = rng.standard_normal((4, 1000, 5)) @ rng.standard_normal((5, 5))
    # repetitions that differ from each other: the pooled covariance holds that spread too
    pred = np.stack([gt * (0.8 + 0.2 * r) + 0.3 * r + rng.standard_normal(gt.shape) for r in range(3)])
    expected = _reference_pooled(pred, gt, seed=4)
    got = pooled_metrics(pred, gt, seed=4)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name
    out = motion_metrics(pred, gt, seed=4)
    for name in expected:  # motion_metrics reports them beside a2p's per-repetition values
        assert out[name] == got[name]
    # a different number from a2p's mean over repetitions: FD is not linear in the frames
    assert abs(out["pooled_fd_g"] - out["fd_g"].mean) > 0.05 * out["fd_g"].mean


def test_pooled_metrics_of_one_repetition_are_the_per_repetition_ones():
    rng = np.random.default_rng(8)
    gt = rng.standard_normal((3, 120, 4))
    pred = gt[None] + 0.5 * rng.standard_normal((1, 3, 120, 4))
    mask = np.ones((3, 120), dtype=bool)
    mask[0, 10:30] = False
    for m in (None, mask):
        out = motion_metrics(pred, gt, mask=m)
        assert out["pooled_fd_g"] == out["fd_g"].values[0]
        assert out["pooled_fd_k"] == out["fd_k"].values[0]
        assert out["pooled_div_g"] == out["div_g"].values[0]


def test_pooled_metrics_count_only_valid_frames_of_every_repetition():
    from a2p.evaluation.metrics import pooled_metrics

    rng = np.random.default_rng(9)
    gt = rng.standard_normal((3, 80, 4))
    pred = rng.standard_normal((2, 3, 80, 4)) + 0.2
    mask = np.ones((3, 80), dtype=bool)
    mask[2, 40:60] = False
    spoiled_gt, spoiled_pred = gt.copy(), pred.copy()
    spoiled_gt[2, 40:60], spoiled_pred[:, 2, 40:60] = 1e3, -1e3
    clean, spoiled = pooled_metrics(pred, gt, mask=mask), pooled_metrics(spoiled_pred, spoiled_gt, mask=mask)
    for name in clean:
        assert spoiled[name] == pytest.approx(clean[name], rel=1e-9)
    both = np.concatenate([pred[0][mask], pred[1][mask]])  # repetition-major, as the reference pools
    truth = np.concatenate([gt[mask], gt[mask]])
    assert clean["pooled_fd_g"] == pytest.approx(
        frechet_distance(*gaussian_stats(truth), *gaussian_stats(both)), rel=1e-12
    )
    with pytest.raises(DataError, match="repetitions, chunks, frames, channels"):
        pooled_metrics(pred[0], gt)
