"""Parallel-in-time DDIM (Picard iterations): exact with a window of 1, converges to DDIM, fewer rounds."""

import pytest
import torch

from a2p.config.denoiser import denoiser_preset
from a2p.diffusion import cosine_schedule, ddim_sample, respaced_schedule
from a2p.diffusion.parallel import PicardStats, picard_ddim
from a2p.models.denoiser import build_denoiser
from a2p.sampling import SamplerSetting, sample_motion


@pytest.fixture(scope="module")
def face():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_denoiser(denoiser_preset("face", "debug")).eval()


def toy_model(x, t):
    """A smooth x0 predictor that depends on x and t, as a trained denoiser does."""
    return torch.tanh(0.7 * x) * (1 + t.float().view(-1, 1, 1) / 2000)


def test_a_window_of_one_is_sequential_ddim_exactly():
    schedule = respaced_schedule(cosine_schedule(1000), "ddim50")
    x_T = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(0))
    stats = PicardStats(0)
    out = picard_ddim(toy_model, schedule, x_T, window=1, stats=stats)
    torch.testing.assert_close(out, ddim_sample(toy_model, schedule, x_T), rtol=1e-5, atol=1e-6)
    assert stats.rounds == stats.steps == 50


@pytest.mark.parametrize("window", [4, 16, 50])
def test_picard_converges_to_ddim_in_fewer_rounds(window):
    schedule = respaced_schedule(cosine_schedule(1000), "ddim50")
    x_T = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(1))
    stats = PicardStats(0)
    out = picard_ddim(toy_model, schedule, x_T, window=window, tolerance=1e-4, stats=stats)
    torch.testing.assert_close(out, ddim_sample(toy_model, schedule, x_T), rtol=0, atol=2e-3)
    assert stats.rounds < 50 <= stats.step_evaluations  # fewer sequential calls, more total compute


def test_paraddim_setting_samples_what_ddim_samples(face):
    assert SamplerSetting.parse("paraddim20").sampler == "picard_ddim"
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(1, 200, denoiser_preset("face", "debug").audio_dim, generator=gen)
    ddim = sample_motion(face, features, 60, reps=2, setting="ddim20", guidance=3.0, seed=4)
    para = sample_motion(face, features, 60, reps=2, setting="paraddim20", guidance=3.0, seed=4)
    scale = ddim.abs().mean()
    assert (para - ddim).abs().max() < 0.02 * scale
