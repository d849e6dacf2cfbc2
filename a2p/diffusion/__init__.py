"""The diffusion core: pure functions of tensors and a model callable, apart from any network.

- `schedule`: the cosine noise schedule, q_sample, the posterior q(x_{t-1} | x_t, x_0);
- `respace`: `ddimN` and section spacings of the training timesteps;
- `losses`: the masked x0 MSE plus velocity loss, timestep sampling, per-quartile sums;
- `guidance`: classifier-free guidance, batched (2B rows) or in two passes;
- `samplers`: DDIM (with eta), ancestral, DPM-Solver++(2M).
"""

from a2p.diffusion.guidance import GuidableDenoiser, Model, cfg_combine, guided_model
from a2p.diffusion.losses import (
    DiffusionLoss,
    diffusion_loss,
    loss_by_quartile,
    sample_timesteps,
    training_loss,
)
from a2p.diffusion.respace import respace, respaced_schedule, space_timesteps
from a2p.diffusion.samplers import (
    SAMPLERS,
    SamplerName,
    StepCoefficients,
    StepHook,
    ancestral_coefficients,
    ancestral_sample,
    ddim_coefficients,
    ddim_sample,
    dpm_solver_2m_coefficients,
    dpm_solver_2m_sample,
    randn,
    run_sampler,
    sample,
    sampler_coefficients,
)
from a2p.diffusion.schedule import (
    NUM_TRAIN_STEPS,
    NoiseSchedule,
    cosine_betas,
    cosine_schedule,
    q_posterior,
    q_sample,
    schedule_from_betas,
)

__all__ = [
    "NUM_TRAIN_STEPS",
    "SAMPLERS",
    "DiffusionLoss",
    "GuidableDenoiser",
    "Model",
    "NoiseSchedule",
    "SamplerName",
    "StepCoefficients",
    "StepHook",
    "ancestral_coefficients",
    "ancestral_sample",
    "cfg_combine",
    "cosine_betas",
    "cosine_schedule",
    "ddim_coefficients",
    "ddim_sample",
    "diffusion_loss",
    "dpm_solver_2m_coefficients",
    "dpm_solver_2m_sample",
    "guided_model",
    "loss_by_quartile",
    "q_posterior",
    "q_sample",
    "randn",
    "respace",
    "respaced_schedule",
    "run_sampler",
    "sample",
    "sample_timesteps",
    "sampler_coefficients",
    "schedule_from_betas",
    "space_timesteps",
    "training_loss",
]
