"""Diffusion core: schedule against its closed form, q_sample statistics, respacing, samplers on
analytic toys (oracle x0, Gaussian and two-Gaussian data with their exact denoisers),
classifier-free guidance, the masked loss."""

from __future__ import annotations

import math

import pytest
import torch

from a2p.diffusion import (
    NUM_TRAIN_STEPS,
    NoiseSchedule,
    ancestral_sample,
    cfg_combine,
    cosine_schedule,
    ddim_sample,
    diffusion_loss,
    dpm_solver_2m_sample,
    guided_model,
    loss_by_quartile,
    q_posterior,
    q_sample,
    respaced_schedule,
    sample,
    sample_timesteps,
    space_timesteps,
    training_loss,
)
from a2p.errors import ConfigError

torch.set_num_threads(1)

BASE = cosine_schedule()


def closed_form_alpha_bar(step: int, steps: int = NUM_TRAIN_STEPS, s: float = 0.008) -> float:
    """alpha_bar after `step` noising steps: f(step / T) / f(0), Nichol & Dhariwal (2021) eq. 17."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return f(step / steps) / f(0.0)


# ---------------------------------------------------------------------------------------------
# analytic toys: data distributions whose optimal denoiser E[x0 | x_t] is known in closed form


def gaussian_denoiser(mu: float, std: float):
    """E[x0 | x_t] for x0 ~ N(mu, std^2), looked up by ORIGINAL timestep in the training schedule."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = BASE.sqrt_alphas_cumprod[t].float().view(-1, *([1] * (x_t.ndim - 1)))
        var_t = std**2 * a**2 + (1 - a**2)
        return mu + a * std**2 / var_t * (x_t - a * mu)

    return model


def mixture_denoiser(weights, means, stds):
    """E[x0 | x_t] for x0 ~ sum_k w_k N(m_k, s_k^2): responsibility-weighted component posteriors."""
    w = torch.tensor(weights)
    m = torch.tensor(means)
    s = torch.tensor(stds)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = BASE.sqrt_alphas_cumprod[t].float().view(-1, *([1] * (x_t.ndim - 1)), 1)
        x = x_t[..., None]  # (..., K)
        var_t = s**2 * a**2 + (1 - a**2)
        log_resp = w.log() - 0.5 * var_t.log() - 0.5 * (x - a * m) ** 2 / var_t
        resp = torch.softmax(log_resp, dim=-1)
        component_mean = m + a * s**2 / var_t * (x - a * m)
        return (resp * component_mean).sum(-1)

    return model


def mixture_samples(weights, means, stds, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=g)
    return torch.tensor(means)[k] + torch.tensor(stds)[k] * torch.randn(n, generator=g)


def oracle(x0: torch.Tensor):
    """A model that always predicts the true x0."""
    return lambda x_t, t: x0.expand_as(x_t)


# ---------------------------------------------------------------------------------------------
# schedule


def test_cosine_schedule_matches_closed_form():
    assert len(BASE) == NUM_TRAIN_STEPS
    assert torch.equal(BASE.timesteps, torch.arange(NUM_TRAIN_STEPS))
    expected = torch.tensor(
        [closed_form_alpha_bar(k + 1) for k in range(NUM_TRAIN_STEPS)], dtype=torch.float64
    )
    unclipped = BASE.betas < 0.999
    assert unclipped[:-1].all(), "only the last beta reaches the clip"
    # alpha_bar after k + 1 steps is f((k + 1) / T) / f(0) wherever no beta was clipped
    torch.testing.assert_close(BASE.alphas_cumprod[:-1], expected[:-1], rtol=1e-10, atol=1e-14)
    assert BASE.betas[-1] == pytest.approx(0.999)
    assert BASE.alphas_cumprod[-1] == pytest.approx(BASE.alphas_cumprod[-2].item() * (1 - 0.999), rel=1e-9)
    assert (BASE.betas[1:] > BASE.betas[:-1]).all(), "cosine betas increase with t"
    torch.testing.assert_close(BASE.betas[0], torch.tensor(1 - closed_form_alpha_bar(1), dtype=torch.float64))


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from the joint Gaussian of (x_{t-1}, x_t) given x_0, independently."""
    t = torch.tensor([1, 10, 500, 998])
    x0 = torch.tensor([0.3, -1.2, 2.0, 0.7]).view(4, 1, 1)
    x_t = torch.tensor([1.1, 0.4, -0.8, 0.2]).view(4, 1, 1)
    mean, variance, log_variance = q_posterior(BASE, x0, x_t, t)
    for row, step in enumerate(t.tolist()):
        a_prev = closed_form_alpha_bar(step)
        a = closed_form_alpha_bar(step + 1)
        alpha = a / a_prev
        cov = math.sqrt(alpha) * (1 - a_prev)  # Cov(x_{t-1}, x_t | x_0)
        cond_mean = math.sqrt(a_prev) * x0[row].item() + cov / (1 - a) * (
            x_t[row].item() - math.sqrt(a) * x0[row].item()
        )
        cond_var = (1 - a_prev) - cov**2 / (1 - a)
        assert mean[row].item() == pytest.approx(cond_mean, rel=1e-4, abs=1e-5)
        assert variance[row].item() == pytest.approx(cond_var, rel=1e-4)
        assert log_variance[row].item() == pytest.approx(math.log(cond_var), rel=1e-4)
    # at t = 0 the variance is 0 and its log is clipped to the value at t = 1
    assert BASE.posterior_variance[0] == 0
    assert BASE.posterior_log_variance_clipped[0] == BASE.posterior_log_variance_clipped[1]


def test_q_sample_statistics():
    t = torch.tensor([0, 250, 600, 999])
    x0 = torch.tensor([1.5, -2.0, 0.7, 3.0]).view(4, 1, 1).expand(4, 40_000, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = q_sample(BASE, x0, t, noise)
    assert x_t.dtype == torch.float32
    for row, step in enumerate(t.tolist()):
        a = closed_form_alpha_bar(step + 1) if step < NUM_TRAIN_STEPS - 1 else BASE.alphas_cumprod[-1].item()
        assert x_t[row].mean().item() == pytest.approx(math.sqrt(a) * x0[row, 0, 0].item(), abs=0.02)
        assert x_t[row].var().item() == pytest.approx(1 - a, abs=0.02)


# ---------------------------------------------------------------------------------------------
# respacing


def test_full_respacing_is_the_base_schedule():
    full = respaced_schedule(BASE, "ddim1000")
    assert torch.equal(full.timesteps, BASE.timesteps)
    torch.testing.assert_close(full.betas, BASE.betas, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(full.posterior_variance, BASE.posterior_variance, rtol=1e-9, atol=1e-15)
    assert space_timesteps(NUM_TRAIN_STEPS, "") == list(range(NUM_TRAIN_STEPS))


@pytest.mark.parametrize("count", [25, 50, 500])
def test_ddim_respacing_keeps_a_subset_of_alpha_bar(count: int):
    spaced = respaced_schedule(BASE, f"ddim{count}")
    assert len(spaced) == count
    stride = NUM_TRAIN_STEPS // count
    assert spaced.timesteps.tolist() == list(range(0, NUM_TRAIN_STEPS, stride))
    torch.testing.assert_close(
        spaced.alphas_cumprod, BASE.alphas_cumprod[spaced.timesteps], rtol=1e-12, atol=0
    )
    # the recomputed betas reproduce the kept alpha_bar
    torch.testing.assert_close(torch.cumprod(1 - spaced.betas, 0), spaced.alphas_cumprod, rtol=1e-9, atol=0)


def test_section_respacing_spans_the_whole_process():
    steps = space_timesteps(NUM_TRAIN_STEPS, "25")
    assert len(steps) == 25 and steps[0] == 0 and steps[-1] == NUM_TRAIN_STEPS - 1
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert len(space_timesteps(NUM_TRAIN_STEPS, "10,20")) == 30


@pytest.mark.parametrize("spec", ["ddim300", "ddim", "ddim0", "fast", "2000", "ddim2000"])
def test_bad_respacing_is_a_config_error(spec: str):
    with pytest.raises(ConfigError):
        space_timesteps(NUM_TRAIN_STEPS, spec)


# ---------------------------------------------------------------------------------------------
# samplers


@pytest.mark.parametrize(
    "sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("ancestral", 0.0), ("dpmpp_2m", 0.0)]
)
def test_oracle_lands_on_x0(sampler: str, eta: float):
    x0 = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(1))
    spaced = respaced_schedule(BASE, "ddim50")
    out = sample(
        oracle(x0), spaced, x0.shape, sampler=sampler, eta=eta, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_deterministic_oracle_trajectory_stays_on_q_sample(sampler: str):
    """With the true x0, DDIM (eq. 12) and DPM-Solver++ keep x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 11, 4, generator=g)
    eps = torch.randn(2, 11, 4, generator=g)
    spaced = respaced_schedule(BASE, "ddim20")
    descending = spaced.timesteps.flip(0)
    x_T = q_sample(BASE, x0, descending[:1].expand(2), eps)
    errors = []

    def check(x: torch.Tensor, i: int) -> None:
        target = x0 if i == len(spaced) - 1 else q_sample(BASE, x0, descending[i + 1].expand(2), eps)
        errors.append((x - target).abs().max().item())

    sample(oracle(x0), spaced, sampler=sampler, noise=x_T, on_step=check)
    assert len(errors) == 20
    assert max(errors) < 1e-4


def test_model_is_called_with_original_timesteps():
    seen = []

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x_t.shape[0],) and t.dtype == torch.long
        assert (t == t[0]).all()
        seen.append(int(t[0]))
        return torch.zeros_like(x_t)

    sample(model, respaced_schedule(BASE, "ddim50"), (3, 4, 2))
    assert seen == list(range(980, -1, -20))


def test_step_hook_sees_every_step_and_can_replace_x():
    x0 = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(4))
    spaced = respaced_schedule(BASE, "ddim10")
    calls = []

    def hook(x: torch.Tensor, i: int) -> torch.Tensor | None:
        calls.append(i)
        return x + 1 if i == len(spaced) - 1 else None

    out = ddim_sample(oracle(x0), spaced, torch.randn(2, 5, 3), on_step=hook)
    assert calls == list(range(10))
    torch.testing.assert_close(out, x0 + 1)


def test_bfloat16_model_output_is_updated_in_float32():
    x0 = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(5))
    model = lambda x_t, t: x0.to(torch.bfloat16).expand_as(x_t)  # noqa: E731
    out = dpm_solver_2m_sample(model, respaced_schedule(BASE, "ddim25"), torch.randn(2, 6, 3))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0.to(torch.bfloat16).float())


MIXTURE = ([0.3, 0.7], [-1.5, 1.2], [0.3, 0.5])


def test_ddim_eta1_equals_ancestral():
    """Same noise: DDIM with eta = 1 takes the ancestral step exactly (sigma^2 = beta~)."""
    model = mixture_denoiser(*MIXTURE)
    spaced = respaced_schedule(BASE, "ddim100")
    x_T = torch.randn(256, 1, 1, generator=torch.Generator().manual_seed(6))
    ddim = ddim_sample(model, spaced, x_T, eta=1.0, generator=torch.Generator().manual_seed(7))
    ancestral = ancestral_sample(model, spaced, x_T, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ddim, ancestral, rtol=0, atol=1e-4)


def test_ddim_eta1_matches_ancestral_in_distribution():
    """1000 steps on two Gaussians with the exact denoiser: both samplers reach the data law."""
    model = mixture_denoiser(*MIXTURE)
    n = 20_000
    ddim = ddim_sample(
        model,
        BASE,
        torch.randn(n, 1, 1, generator=torch.Generator().manual_seed(8)),
        eta=1.0,
        generator=torch.Generator().manual_seed(9),
    ).flatten()
    ancestral = ancestral_sample(
        model,
        BASE,
        torch.randn(n, 1, 1, generator=torch.Generator().manual_seed(10)),
        generator=torch.Generator().manual_seed(11),
    ).flatten()
    data = mixture_samples(*MIXTURE, n=n, seed=12)
    for samples in (ddim, ancestral):
        assert samples.mean().item() == pytest.approx(data.mean().item(), abs=0.05)
        assert samples.std().item() == pytest.approx(data.std().item(), abs=0.05)
        assert (samples > 0).float().mean().item() == pytest.approx(0.7, abs=0.02)
        # spread within the left mode (not only of the whole law)
        assert samples[samples < 0].std().item() == pytest.approx(data[data < 0].std().item(), abs=0.03)
    assert ddim.mean().item() == pytest.approx(ancestral.mean().item(), abs=0.05)
    assert ddim.std().item() == pytest.approx(ancestral.std().item(), abs=0.05)


def probability_flow_endpoint(x_T: torch.Tensor, first_step: int, mu: float, std: float) -> torch.Tensor:
    """Exact probability-flow ODE map for N(mu, std^2) data: the z-score of x_t is conserved."""
    a = BASE.alphas_cumprod[first_step].item()
    z = (x_T - math.sqrt(a) * mu) / math.sqrt(a * std**2 + 1 - a)
    return mu + std * z


def test_deterministic_samplers_follow_the_probability_flow():
    mu, std = 1.0, 0.5
    model = gaussian_denoiser(mu, std)
    x_T = torch.randn(4096, 1, 1, generator=torch.Generator().manual_seed(13))

    def error(out: torch.Tensor, spaced: NoiseSchedule) -> float:
        return (out - probability_flow_endpoint(x_T, int(spaced.timesteps[-1]), mu, std)).abs().max().item()

    fine = respaced_schedule(BASE, "ddim500")
    coarse = respaced_schedule(BASE, "20")
    ddim_fine = error(ddim_sample(model, fine, x_T), fine)
    ddim_coarse = error(ddim_sample(model, coarse, x_T), coarse)
    dpm_coarse = error(dpm_solver_2m_sample(model, coarse, x_T), coarse)
    assert ddim_fine < 0.01
    assert dpm_coarse < 0.02
    assert dpm_coarse < ddim_coarse / 2, "the second-order solver beats first order at 20 steps"


def test_dpm_solver_gaussian_statistics_in_25_steps():
    mu, std = 1.0, 0.5
    out = sample(
        gaussian_denoiser(mu, std),
        respaced_schedule(BASE, "25"),
        (20_000, 1, 1),
        sampler="dpmpp_2m",
        generator=torch.Generator().manual_seed(14),
    )
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(std, abs=0.02)


def test_per_row_generators_make_rows_independent_of_batching():
    model = gaussian_denoiser(0.0, 1.0)
    spaced = respaced_schedule(BASE, "ddim20")

    def generators(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    pair = sample(model, spaced, (2, 3, 2), eta=1.0, generator=generators([20, 21]))
    alone = sample(model, spaced, (1, 3, 2), eta=1.0, generator=generators([21]))
    torch.testing.assert_close(pair[1:], alone)
    assert not torch.allclose(pair[0], pair[1])


def test_bad_sampler_settings_are_config_errors():
    with pytest.raises(ConfigError):
        sample(oracle(torch.zeros(1, 2, 2)), BASE, (1, 2, 2), sampler="euler")
    with pytest.raises(ConfigError):
        sample(oracle(torch.zeros(1, 2, 2)), BASE, (1, 2, 2), eta=1.5)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance


def toy_guidable(cond: torch.Tensor, null: float, calls: list[int]):
    """Row-wise nonlinear denoiser; row r of a batch of k * B rows belongs to clip r mod B."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        calls.append(x_t.shape[0])
        rows = cond.repeat(x_t.shape[0] // cond.shape[0])  # (kB,)
        c = torch.where(keep, rows, torch.full_like(rows, null)).view(-1, 1, 1)
        scale = (1 + t.float() / 1000).view(-1, 1, 1)
        return torch.tanh(x_t * scale + c) * (1 + c**2)

    return denoise


def test_cfg_at_scale_one_is_the_conditional_output():
    cond, uncond = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    denoise = toy_guidable(torch.tensor([0.5, -1.0, 2.0]), null=0.0, calls=[])
    x_t, t = torch.randn(3, 5, 2), torch.tensor([10, 500, 999])
    conditional = denoise(x_t, t, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(guided_model(denoise, 1.0)(x_t, t), conditional)
    # a per-row scale tensor of ones takes the full batched path and must agree
    torch.testing.assert_close(guided_model(denoise, torch.ones(3))(x_t, t), conditional)


@pytest.mark.parametrize("scale", [2.0, 10.0, "rows"])
def test_batched_cfg_equals_two_passes(scale):
    cond = torch.tensor([0.5, -1.0, 2.0])
    if scale == "rows":
        scale = torch.tensor([1.5, 2.0, 10.0])
    batched_calls, two_pass_calls = [], []
    x_t, t = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(15)), torch.tensor([10, 500, 999])
    batched = guided_model(toy_guidable(cond, 0.3, batched_calls), scale)(x_t, t)
    two_pass = guided_model(toy_guidable(cond, 0.3, two_pass_calls), scale, batched=False)(x_t, t)
    torch.testing.assert_close(batched, two_pass)
    assert batched_calls == [6] and two_pass_calls == [3, 3]
    # and both are uncond + s (cond - uncond) of the separate outputs
    denoise = toy_guidable(cond, 0.3, [])
    c = denoise(x_t, t, torch.ones(3, dtype=torch.bool))
    u = denoise(x_t, t, torch.zeros(3, dtype=torch.bool))
    s = scale.view(-1, 1, 1) if isinstance(scale, torch.Tensor) else scale
    torch.testing.assert_close(batched, u + s * (c - u))


def test_guided_sampling_runs_the_batched_model():
    calls: list[int] = []
    model = guided_model(toy_guidable(torch.tensor([0.5, -1.0]), 0.0, calls), 2.0)
    out = sample(
        model, respaced_schedule(BASE, "ddim10"), (2, 4, 3), generator=torch.Generator().manual_seed(16)
    )
    assert out.shape == (2, 4, 3) and torch.isfinite(out).all()
    assert calls == [4] * 10


# ---------------------------------------------------------------------------------------------
# loss


def masked_batch(seed: int = 17):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 12, 4, generator=g)
    pred = torch.randn(3, 12, 4, generator=g)
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[0, 9:] = False  # padding
    valid[1, 3:5] = False  # missing face frames
    valid[1, 10:] = False
    return x0, pred, valid


def test_loss_ignores_padded_and_missing_frames():
    x0, pred, valid = masked_batch()
    base = diffusion_loss(pred, x0, valid, lambda_vel=2.0)
    x0_changed, pred_changed = x0.clone(), pred.clone()
    x0_changed[~valid] = float("nan")  # missing targets may hold anything
    pred_changed[~valid] = 100.0
    changed = diffusion_loss(pred_changed, x0_changed, valid, lambda_vel=2.0)
    torch.testing.assert_close(changed.loss, base.loss)
    torch.testing.assert_close(changed.vel, base.vel)

    pred_grad = pred_changed.clone().requires_grad_()
    diffusion_loss(pred_grad, x0_changed, valid, lambda_vel=2.0).loss.sum().backward()
    assert torch.isfinite(pred_grad.grad).all()
    assert (pred_grad.grad[~valid] == 0).all()
    assert (pred_grad.grad[valid].abs().sum(-1) > 0).all()


def test_loss_is_the_mean_over_valid_frames_per_sample():
    x0, pred, valid = masked_batch()
    terms = diffusion_loss(pred, x0, valid, lambda_vel=2.0)
    for field in (terms.loss, terms.mse, terms.vel):
        assert field.shape == (3,) and field.dtype == torch.float32
    for row in range(3):
        frames = valid[row].nonzero().flatten().tolist()
        squared = [((pred[row, k] - x0[row, k]) ** 2).mean().item() for k in frames]
        assert terms.mse[row].item() == pytest.approx(sum(squared) / len(squared), rel=1e-5)
    torch.testing.assert_close(terms.loss, terms.mse + 2.0 * terms.vel)
    assert set(terms.terms()) == {"loss", "mse", "vel"}


def test_velocity_term_vanishes_for_constant_offsets_and_sees_ramps():
    x0, _, valid = masked_batch()
    offset = torch.tensor([0.5, -2.0, 3.0, 1.0])
    shifted = diffusion_loss(x0 + offset, x0, valid, lambda_vel=2.0)
    torch.testing.assert_close(shifted.vel, torch.zeros(3))
    torch.testing.assert_close(shifted.mse, (offset**2).mean().expand(3))
    ramp = 0.25 * torch.arange(12.0).view(1, 12, 1)
    ramped = diffusion_loss(x0 + ramp, x0, valid, lambda_vel=2.0)
    torch.testing.assert_close(ramped.vel, torch.full((3,), 0.25**2))
    assert (diffusion_loss(x0 + ramp, x0, valid).vel == 0).all(), "no velocity term without lambda_vel"


def test_sample_with_no_valid_frame_has_zero_loss():
    x0, pred, valid = masked_batch()
    valid[2] = False
    terms = diffusion_loss(pred, x0, valid.float(), lambda_vel=2.0)
    assert terms.loss[2] == 0 and torch.isfinite(terms.loss).all()


def test_training_loss_noises_with_q_sample_and_scores_x0():
    x0, _, valid = masked_batch()
    t = torch.tensor([0, 400, 999])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(18))
    seen = {}

    def model(x_t, t_in):
        seen["x_t"], seen["t"] = x_t, t_in
        return x0

    terms = training_loss(model, BASE, x0, valid, t, lambda_vel=2.0, noise=noise)
    torch.testing.assert_close(seen["x_t"], q_sample(BASE, x0, t, noise))
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(terms.loss, torch.zeros(3))


def test_timestep_sampling_and_quartile_sums():
    t = sample_timesteps(40_000, NUM_TRAIN_STEPS, "cpu", torch.Generator().manual_seed(19))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < NUM_TRAIN_STEPS
    sums, counts = loss_by_quartile(t.float(), t, NUM_TRAIN_STEPS)
    assert counts.sum() == 40_000
    torch.testing.assert_close(counts / 40_000, torch.full((4,), 0.25), atol=0.01, rtol=0)
    for quartile in range(4):
        in_bin = (t >= 250 * quartile) & (t < 250 * (quartile + 1))
        assert sums[quartile].item() == pytest.approx(t[in_bin].float().sum().item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# device residency


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_loop_never_synchronizes_with_the_host():
    device = torch.device("cuda")
    spaced = respaced_schedule(BASE, "ddim25").to(device)
    model = guided_model(toy_guidable(torch.tensor([0.5, -1.0], device=device), 0.0, []), 2.0)
    generator = torch.Generator(device).manual_seed(0)
    noise = torch.randn(2, 8, 3, device=device, generator=generator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sampler, eta in (("ddim", 0.0), ("ddim", 1.0), ("ancestral", 0.0), ("dpmpp_2m", 0.0)):
            out = sample(model, spaced, sampler=sampler, eta=eta, noise=noise, generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and torch.isfinite(out).all()
