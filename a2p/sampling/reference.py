"""The reference's sampling loops, for benchmarks and equivalence tests (never for outputs).

facebookresearch/audio2photoreal, sample/generate.py: repetitions one after another, the audio
featurized and the condition re-encoded inside every denoising step, the conditional and
unconditional passes run separately.
"""

from __future__ import annotations

import torch
from torch import Tensor

from a2p.diffusion import guided_model, sample
from a2p.models.denoiser import Denoiser
from a2p.sampling.settings import repetition_generators, setting_schedule


@torch.no_grad()
def sample_motion_reference(
    denoiser: Denoiser,
    featurize,
    audio: Tensor,
    frames: int,
    *,
    guide: Tensor | None = None,
    reps: int = 1,
    setting: str = "ddim500",
    guidance: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """The reference's loop: repetitions in turn, featurize + encode inside every step, two passes."""
    device = audio.device
    parsed, schedule = setting_schedule(setting, device)
    sequential = "ddim" if parsed.sampler == "picard_ddim" else parsed.sampler
    outputs = []
    for generator in repetition_generators(seed, reps, device):

        def denoise(x_t: Tensor, t: Tensor, keep_mask: Tensor) -> Tensor:
            features = featurize(audio)
            keep = keep_mask[:1].expand(x_t.shape[0])
            return denoiser(x_t, t, denoiser.encode_condition(features, guide, keep))

        model = guided_model(denoise, guidance, batched=False)
        shape = (1, frames, denoiser.config.motion_dim)
        outputs.append(
            # the reference had no parallel-in-time sampler: paraddimN runs as plain DDIM here
            sample(model, schedule, shape, sampler=sequential, generator=[generator], device=device)
        )
    return torch.cat(outputs)
