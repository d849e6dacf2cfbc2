"""The `face` and `body` tasks: diffusion denoisers trained on shard crops.

One training step (DESIGN.md; the reference's `train_diffusion`): draw t uniformly from the 1000
training steps, noise the clean motion x0 with q_sample, keep each row's conditioning with
probability 1 - `cond_drop_prob` (classifier-free guidance is trained by dropping audio and guide
poses together), predict x0 and take the MSE on valid frames (padding, and for the face the
missing frames, masked) plus `lambda_vel` times the velocity MSE. No variational-bound pass.
Audio features: `a2p.training.audio_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from a2p.config.denoiser import DenoiserConfig, denoiser_preset
from a2p.constants import FEATURE_RATE_HZ, KEYFRAME_INTERVAL
from a2p.data.format import features_frames
from a2p.diffusion import (
    NUM_TRAIN_STEPS,
    cosine_schedule,
    diffusion_loss,
    loss_by_quartile,
    q_sample,
    sample_timesteps,
)
from a2p.errors import ConfigError
from a2p.models.denoiser import ConditionInputs, build_denoiser
from a2p.training.audio_inputs import AudioInputs
from a2p.training.tasks import ResumableIterable, Task, TaskContext, register_task


@dataclass
class DiffusionTaskConfig:
    """A face or body diffusion model and how it is trained."""

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    """The denoiser network."""
    featurizer: str = "mel"
    """Frozen audio featurizer (`a2p.models.audio`), used when the shards carry no features."""
    featurizer_weights: str | None = None
    """Local weights file of the featurizer (wav2vec2)."""
    cond_drop_prob: float = 0.2
    """Probability of dropping a row's audio (and guide poses) to train classifier-free guidance."""
    lambda_vel: float = 0.0
    """Weight of the velocity term of the loss (2 for the body, as the reference)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 16
    """Samples in each stream's shuffle buffer."""
    eval_sampler: str = "ddim20"
    """Sampler setting of the evaluation sample (`train.log.eval_interval` steps)."""
    eval_guidance: float = 2.0
    """Classifier-free guidance scale of the evaluation sample."""


class DiffusionTask(Task):
    """Shared by `face` and `body`: which motion stream is denoised and which mask applies."""

    config_class = DiffusionTaskConfig
    find_unused_parameters = False
    motion_key: str = ""
    mask_key: str = ""
    uses_guide: bool = False

    def __init__(self, config: DiffusionTaskConfig) -> None:
        super().__init__(config)
        if not 0.0 <= config.cond_drop_prob < 1.0:
            raise ConfigError(f"task.cond_drop_prob must lie in [0, 1), got {config.cond_drop_prob}")
        if (config.model.guide_dim > 0) != self.uses_guide:
            raise ConfigError(
                f"task.model.guide_dim={config.model.guide_dim} does not fit the {self.name} task "
                f"({'needs' if self.uses_guide else 'takes no'} guide poses)"
            )
        self._schedule = None
        self.audio = AudioInputs(
            config.featurizer, config.featurizer_weights, config.model.audio_dim, "task.model.audio_dim"
        )

    def build_model(self) -> nn.Module:
        return build_denoiser(self.config.model)

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        return self.audio.loader(ctx, self.name, self.config.num_workers, self.config.shuffle_buffer)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0 = batch[self.motion_key].float()  # (B, T, D)
        valid = batch[self.mask_key]  # (B, T)
        batch_size, device = x0.shape[0], x0.device
        if self._schedule is None or self._schedule.alphas_cumprod.device != device:
            self._schedule = cosine_schedule(NUM_TRAIN_STEPS, device=device)
        t = sample_timesteps(batch_size, NUM_TRAIN_STEPS, device)
        keep = torch.rand(batch_size, device=device) >= self.config.cond_drop_prob
        x_t = q_sample(self._schedule, x0, t, torch.randn_like(x0))
        guide = batch["keyframes"] if self.uses_guide else None
        features = self.audio(batch, device)  # (B, F, C)
        x0_pred = model(x_t, t, ConditionInputs(features.to(x_t.dtype), guide, keep))
        terms = diffusion_loss(x0_pred.float(), x0, valid, lambda_vel=self.config.lambda_vel)
        sums, counts = loss_by_quartile(terms.loss.detach(), t, NUM_TRAIN_STEPS)
        quartiles = sums / counts.clamp(min=1)
        out = {
            "loss": terms.loss.mean(),
            "mse": terms.mse.detach().mean(),
            "vel": terms.vel.detach().mean(),
            "sample_loss": terms.loss.detach(),
        }
        out.update({f"loss_q{i + 1}": quartiles[i] for i in range(4)})
        return out

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"frames": float(batch["length"].sum())}

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """Sample the first validation crop of this rank; MSE to the real motion and a figure of both."""
        from a2p.data import build_eval_loader
        from a2p.inference.sampling import sample_motion
        from a2p.training.figures import motion_figure

        loader = build_eval_loader(
            ctx.data, 1, split="val", rank=ctx.rank, world_size=ctx.world_size,
            audio=not self.audio.shards_have_features,
        )  # fmt: skip
        batch = next(iter(loader))
        batch = {k: v.to(ctx.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        valid = batch[self.mask_key][0]
        frames = int(batch["length"][0])
        guide = batch["keyframes"][:, : max(frames // KEYFRAME_INTERVAL, 1)] if self.uses_guide else None
        features = self.audio(batch, ctx.device)[:, : features_frames(frames, FEATURE_RATE_HZ)]
        generated = sample_motion(
            model, features.float(), frames, guide=guide, setting=self.config.eval_sampler,
            guidance=self.config.eval_guidance, seed=ctx.seed,
        )[0]  # fmt: skip
        real = batch[self.motion_key][0, :frames].float()
        used = valid[:frames]
        mse = (generated - real)[used].pow(2).mean() if used.any() else torch.zeros((), device=ctx.device)
        return {"sample_mse": float(ctx.all_reduce_mean(mse)), "motion": motion_figure(real, generated)}


def _presets(model: str, **task_fields: Any) -> dict[str, DiffusionTaskConfig]:
    return {
        size: DiffusionTaskConfig(model=denoiser_preset(model, size), **task_fields)
        for size in ("paper", "debug")
    }


@register_task("face")
class FaceTask(DiffusionTask):
    """Face-code diffusion: denoises (T, 256) codes; missing face frames are masked out of the loss."""

    motion_key, mask_key, uses_guide = "face", "face_mask", False
    presets = _presets("face")
    default_preset = "paper"


@register_task("body")
class BodyTask(DiffusionTask):
    """Body-pose diffusion with 1 fps guide poses and the velocity loss (lambda_vel = 2)."""

    motion_key, mask_key, uses_guide = "body", "mask", True
    presets = _presets("body", lambda_vel=2.0)
    default_preset = "paper"
