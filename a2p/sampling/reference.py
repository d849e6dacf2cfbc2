"""The reference's sampling loops, for benchmarks and equivalence tests (never for outputs).

facebookresearch/audio2photoreal, sample/generate.py: repetitions one after another, the audio
featurized and the condition re-encoded inside every denoising step, the conditional and
unconditional passes run separately; guide tokens (model/guide.py, `generate` calling `forward`)
without a key/value cache, the audio featurized and encoded again for every token and every
position so far recomputed.

`featurize` (audio (B, S, 2) -> features (B, F, C)) and the models are called through, so a
benchmark can pass timed stand-ins for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from a2p.diffusion import Model, guided_model, sample
from a2p.models.denoiser import Denoiser
from a2p.models.guide import Generators, GuideTransformer, draw_uniforms, sample_top_p
from a2p.sampling.settings import repetition_generators, setting_schedule

Featurize = Callable[[Tensor], Tensor]
"""Audio (B, S, 2) -> features (B, F, C)."""


@torch.no_grad()
def sample_motion_reference(
    denoiser: Denoiser,
    featurize: Featurize,
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
    model = reference_model(denoiser, featurize, audio, guide, guidance)
    for generator in repetition_generators(seed, reps, device):
        shape = (1, frames, denoiser.config.motion_dim)
        outputs.append(
            # the reference had no parallel-in-time sampler: paraddimN runs as plain DDIM here
            sample(model, schedule, shape, sampler=sequential, generator=[generator], device=device)
        )
    return torch.cat(outputs)


def reference_model(
    denoiser: Denoiser, featurize: Featurize, audio: Tensor, guide: Tensor | None, guidance: float
) -> Model:
    """The reference's guided `model(x_t, t)` of one repetition: every call featurizes the audio and
    encodes the condition again, and runs the conditional and unconditional passes separately."""

    def denoise(x_t: Tensor, t: Tensor, keep_mask: Tensor) -> Tensor:
        features = featurize(audio)
        keep = keep_mask[:1].expand(x_t.shape[0])
        return denoiser(x_t, t, denoiser.encode_condition(features, guide, keep))

    return guided_model(denoise, guidance, batched=False)


@torch.no_grad()
def generate_guide_reference(
    guide: GuideTransformer,
    featurize: Featurize,
    audio: Tensor,
    keyframes: int,
    *,
    top_p: float = 0.94,
    temperature: float = 1.0,
    generator: Generators = None,
) -> Tensor:
    """Codes (B, keyframes, levels) as the reference's `generate` made them from audio (B, S, 2).

    For every token the audio is featurized and encoded again, then every position so far is
    recomputed. The uniforms come from `generator` as in `GuideTransformer.generate`, so both
    give the same tokens.
    """
    batch, levels, device = audio.shape[0], guide.config.levels, audio.device
    count = keyframes * levels
    uniforms = draw_uniforms(generator, batch, count, device)  # (B, count)
    inputs = torch.full((batch, 1), guide.start_token, dtype=torch.long, device=device)
    for step in range(count):
        memory = guide.encode_audio(featurize(audio))
        logits = guide.decode(inputs, 0, memory)[:, -1].float()  # (B, codes)
        token = sample_top_p(logits, top_p, temperature, uniforms[:, step])
        inputs = torch.cat((inputs, token[:, None]), dim=1)
    return inputs[:, 1:].view(batch, keyframes, levels)
