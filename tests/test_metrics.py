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
