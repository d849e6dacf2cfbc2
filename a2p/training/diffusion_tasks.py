"""The `face` and `body` tasks: diffusion denoisers trained on shard crops.

One training step (DESIGN.md; the reference's `train_diffusion`): draw t uniformly from the 1000
training steps, noise the clean motion x0 with q_sample, keep each row's conditioning with
probability 1 - `cond_drop_prob` (classifier-free guidance; `cond_dropout` says whether the
body's audio and guide poses are dropped independently, as the reference, or together), predict
x0 and take the MSE on valid frames (padding, and for the face the missing frames, masked) plus
`lambda_vel` times the velocity MSE. No variational-bound pass.
Audio features: `a2p.training.audio_inputs`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from a2p import distributed
from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.config.denoiser import DenoiserConfig, denoiser_preset
from a2p.config.train import TrainConfig, paper_recipe
from a2p.constants import KEYFRAME_INTERVAL
from a2p.diffusion import (
    NUM_TRAIN_STEPS,
    cosine_schedule,
    diffusion_loss,
    loss_by_quartile,
    q_sample,
    sample_timesteps,
)
from a2p.errors import ConfigError, DataError
from a2p.evaluation.metrics import kinematic_diversity, motion_metrics, static_diversity
from a2p.models.denoiser import ConditionInputs
from a2p.sampling import SamplerSetting, sample_motion
from a2p.training.audio_inputs import AudioInputs
from a2p.training.tasks import ResumableIterable, Task, TaskContext, register_task

logger = logging.getLogger(__name__)


CondDropout = Literal["joint", "independent"]
"""How the body's two conditions are dropped: by one draw per row, or by one draw each (the reference)."""


def condition_keep_masks(
    batch_size: int, drop_prob: float, mode: CondDropout, with_guide: bool, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Rows (B,) that keep their audio, and those that keep their guide poses (None: the audio's).

    Each mask keeps a row with probability 1 - drop_prob, drawn from the torch RNG. `independent`
    draws the guide's mask separately (the reference's two `prob_mask_like` calls in
    model/diffusion.py), so 64 / 16 / 16 / 4 % of rows keep both / audio only / guide only / none
    at 0.2; `joint` keeps or drops both together (80 / 0 / 0 / 20 %). The audio's draw comes first
    and is the same in both modes.
    """
    keep = torch.rand(batch_size, device=device) >= drop_prob
    if mode == "independent" and with_guide:
        return keep, torch.rand(batch_size, device=device) >= drop_prob
    return keep, None


def per_sample_draws(
    seeds: Tensor,
    shape: tuple[int, ...],
    drop_prob: float,
    mode: CondDropout,
    with_guide: bool,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Each row's timestep (B,), noise (B, *shape) and condition keeps (B,), from a CPU generator
    seeded by the row's `sample_seed` (`a2p.data.order.Draw.task_seed`), then moved to `device`.

    So a sample's draws do not depend on the rank, the batch or the device it lands on (the
    model's own dropout still draws from each rank's stream). Per row, in this order: the
    timestep, the audio's keep, the guide's keep (always drawn, used when `independent`), the noise.
    """
    steps, keeps, guide_keeps, noises = [], [], [], []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        steps.append(torch.randint(0, NUM_TRAIN_STEPS, (1,), generator=generator))
        keeps.append(torch.rand(1, generator=generator) >= drop_prob)
        guide_keeps.append(torch.rand(1, generator=generator) >= drop_prob)
        noises.append(torch.randn(shape, generator=generator))
    keep = torch.cat(keeps).to(device)
    guide = torch.cat(guide_keeps).to(device) if mode == "independent" and with_guide else None
    return torch.cat(steps).to(device), torch.stack(noises).to(device), keep, guide


@dataclass
class DiffusionTaskConfig:
    """A face or body diffusion model and how it is trained."""

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    """The denoiser network."""
    featurizer: str = "mel"
    """Frozen audio front end: a2p's (`a2p.models.audio`, used when the shards carry no features) or
    the reference's (`vq-wav2vec`, `vq-wav2vec+lip`: `a2p.models.frontend`, run on every crop)."""
    featurizer_weights: str | None = None
    """Its weights file: wav2vec2's, or vq-wav2vec's (fairseq's vq-wav2vec.pt or a released checkpoint)."""
    lip_weights: str | None = None
    """`vq-wav2vec+lip`: the lip regressor's file (iter-0200000.pt or the released face file); None:
    `featurizer_weights` (the released face file holds both)."""
    cond_drop_prob: float = 0.2
    """Probability of dropping a row's audio (and its guide poses) to train classifier-free guidance."""
    cond_dropout: CondDropout = "joint"
    """Body: `independent` drops audio and guide poses by separate draws (the reference); `joint` together."""
    lambda_vel: float = 0.0
    """Weight of the velocity term of the loss (2 for the body, as the reference)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 16
    """Unused: the global sample order permutes the whole split (kept so older run configs load)."""
    eval_sampler: str = "ddim20"
    """Sampler setting of the evaluation sample (`train.log.eval_interval` steps)."""
    eval_guidance: float = 2.0
    """Classifier-free guidance scale of the evaluation sample."""
    eval_metric_windows: int = 8
    """Validation windows (up to 600 frames each) sampled at every evaluation, split over the ranks."""
    eval_metric_chunk: int = 120
    """Frames per chunk of the motion metrics (FD_k, Div_k work within chunks); see `valid_chunks`."""


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
        if config.eval_metric_windows < 1 or config.eval_metric_chunk < 2:
            raise ConfigError(
                "task.eval_metric_windows must be at least 1 and task.eval_metric_chunk at least 2, got "
                f"{config.eval_metric_windows} and {config.eval_metric_chunk}"
            )
        SamplerSetting.parse(config.eval_sampler)  # a typo fails now, not at the first evaluation
        if (config.model.guide_dim > 0) != self.uses_guide:
            raise ConfigError(
                f"task.model.guide_dim={config.model.guide_dim} does not fit the {self.name} task "
                f"({'needs' if self.uses_guide else 'takes no'} guide poses)"
            )
        self._schedule = None
        self.audio = AudioInputs(
            config.featurizer, config.featurizer_weights, config.model.audio_dim, "task.model.audio_dim",
            role=self.name, lip_weights=config.lip_weights,
        )  # fmt: skip

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        return self.audio.loader(ctx, self.name, self.config.num_workers)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0 = batch[self.motion_key].float()  # (B, T, D)
        valid = batch[self.mask_key]  # (B, T)
        batch_size, device = x0.shape[0], x0.device
        if self._schedule is None or self._schedule.alphas_cumprod.device != device:
            self._schedule = cosine_schedule(NUM_TRAIN_STEPS, device=device)
        if "sample_seed" in batch:  # the loader's global order: each row's draws are its own
            t, noise, keep, guide_keep = per_sample_draws(
                batch["sample_seed"], tuple(x0.shape[1:]), self.config.cond_drop_prob,
                self.config.cond_dropout, self.uses_guide, device,
            )  # fmt: skip
        else:
            t = sample_timesteps(batch_size, NUM_TRAIN_STEPS, device)
            keep, guide_keep = condition_keep_masks(
                batch_size, self.config.cond_drop_prob, self.config.cond_dropout, self.uses_guide, device
            )
            noise = torch.randn_like(x0)
        x_t = q_sample(self._schedule, x0, t, noise.to(x0.dtype))
        guide = batch["keyframes"] if self.uses_guide else None
        features = self.audio(batch, device)  # (B, F, C)
        x0_pred = model(x_t, t, ConditionInputs(features.to(x_t.dtype), guide, keep, guide_keep))
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
        """Sample this rank's share of the first `eval_metric_windows` validation windows; rank 0 scores all.

        Rank 0 returns the MSE to the real motion on valid frames (`sample_mse`), the motion metrics
        of `window_metrics` and a figure of window 0; the other ranks return nothing. The body is
        guided by each window's ground-truth keyframes, as the reference's evaluation with GT
        guide, so its metrics measure the denoiser alone, not the guide model's keyframes.
        """
        from a2p.training.figures import motion_figure

        windows = gather_windows(
            [self._sample_window(model, batch, index, ctx) for index, batch in self._eval_batches(ctx)]
        )
        if ctx.rank != 0:
            return {}
        if not windows:
            logger.warning("eval: the val split of %s has no windows; nothing to evaluate", ctx.data)
            return {}
        squares = sum(
            float(np.square((w.generated - w.real)[w.valid], dtype=np.float64).sum()) for w in windows
        )
        values = sum(int(w.valid.sum()) * w.real.shape[1] for w in windows)
        first = windows[0]
        out: dict[str, Any] = {"sample_mse": squares / max(values, 1)}
        out.update(window_metrics(windows, self.config.eval_metric_chunk))
        out["motion"] = motion_figure(
            torch.from_numpy(first.real),
            torch.from_numpy(first.generated),
            title=f"{self.name}: val window {first.index}, real vs. {self.config.eval_sampler} sample",
        )
        return out

    def _eval_batches(self, ctx: TaskContext) -> Iterator[tuple[int, dict[str, Any]]]:
        """(window index in the split, batch of one window) of this rank's share of the windows."""
        from a2p.data import build_eval_loader

        loader = build_eval_loader(
            ctx.data, 1, split="val", rank=ctx.rank, world_size=ctx.world_size,
            audio=not self.audio.shards_have_features, units=ctx.units,
        )  # fmt: skip
        for local, batch in enumerate(loader):
            index = local * ctx.world_size + ctx.rank
            if index >= self.config.eval_metric_windows or not batch["key"][0]:  # "": padding rows
                return
            yield index, batch

    def _sample_window(
        self, model: nn.Module, batch: dict[str, Any], index: int, ctx: TaskContext
    ) -> EvalWindow:
        batch = {k: v.to(ctx.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        frames = int(batch["length"][0])
        guide = batch["keyframes"][:, : max(frames // KEYFRAME_INTERVAL, 1)] if self.uses_guide else None
        features = self.audio.clip_features(batch, ctx.device, frames)
        seed = int(np.random.SeedSequence([ctx.seed, index]).generate_state(1)[0])
        generated = sample_motion(
            model, features.float(), frames, guide=guide, setting=self.config.eval_sampler,
            guidance=self.config.eval_guidance, seed=seed,
        )[0]  # fmt: skip
        return EvalWindow(
            index=index,
            generated=generated.float().cpu().numpy(),
            real=batch[self.motion_key][0, :frames].float().cpu().numpy(),
            valid=batch[self.mask_key][0, :frames].cpu().numpy(),
        )


@dataclass
class EvalWindow:
    """One sampled validation window, cut to its length."""

    index: int
    """Position of the window in the val split (the eval loader's order)."""
    generated: np.ndarray
    """(T, D) sampled motion."""
    real: np.ndarray
    """(T, D) ground-truth motion."""
    valid: np.ndarray
    """(T,) bool: frames that count (False where the face code is missing)."""


def gather_windows(windows: list[EvalWindow]) -> list[EvalWindow]:
    """Every rank's windows on every rank, in window order (one all-gather of objects)."""
    parts = distributed.all_gather_objects(windows)
    return sorted((window for part in parts for window in part), key=lambda window: window.index)


def valid_chunks(windows: list[EvalWindow], chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated and real (C, chunk, D) chunks: each run of valid frames cut into `chunk`-frame pieces.

    Invalid frames never enter a chunk, nor does a frame difference across them; the remainder of
    a run shorter than `chunk` is dropped. Both arrays are cut at the same frames.
    """
    generated, real = [], []
    for window in windows:
        flags = np.concatenate([[0], window.valid.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(flags))  # run starts and (exclusive) stops, alternating
        for start, stop in zip(edges[::2], edges[1::2]):
            for begin in range(start, stop - chunk + 1, chunk):
                generated.append(window.generated[begin : begin + chunk])
                real.append(window.real[begin : begin + chunk])
    width = windows[0].real.shape[1] if windows else 0
    if not real:
        return np.zeros((0, chunk, width)), np.zeros((0, chunk, width))
    return np.stack(generated), np.stack(real)


def window_metrics(windows: list[EvalWindow], chunk: int) -> dict[str, float]:
    """FD_g, FD_k, Div_g, Div_k of the generated windows (`motion_metrics`), the real ones' Div_g, Div_k.

    Computed on `valid_chunks` of `chunk` frames (`metric_frames` of them). With too few frames
    for a covariance of the motion's width, the FD terms are skipped with a warning.
    """
    generated, real = valid_chunks(windows, chunk)
    if real.shape[0] == 0:
        logger.warning(
            "eval: no run of %d valid frames in %d window(s); motion metrics skipped", chunk, len(windows)
        )
        return {}
    if not np.isfinite(generated).all():
        logger.warning("eval: the samples hold NaN or Inf; motion metrics skipped")
        return {}
    out = {"metric_frames": float(real.shape[0] * real.shape[1])}
    try:
        result = motion_metrics(generated[None], real)
    except DataError as err:  # too few frames for a covariance of width D
        logger.warning("eval: FD_g and FD_k skipped: %s", err)
        out["div_g"], out["div_k"] = static_diversity(generated), kinematic_diversity(generated)
        out["gt_div_g"], out["gt_div_k"] = static_diversity(real), kinematic_diversity(real)
        return out
    out.update({name: result[name].mean for name in ("fd_g", "fd_k", "div_g", "div_k")})
    out.update({name: result[name] for name in ("gt_div_g", "gt_div_k")})
    return out


def _presets(model: str, **task_fields: Any) -> dict[str, DiffusionTaskConfig]:
    """`paper`: the released architecture (`denoiser_preset(model, "paper")`) on the reference's
    front end (`REFERENCE_FEATURIZERS`: vq-wav2vec, + the lip regressor for the face, whose
    weights it needs: `--audio-weights`), with independent dropout; `a2p`: a2p's variant on mel
    features with joint dropout; `debug`: tiny, mel."""
    return {
        "paper": DiffusionTaskConfig(
            model=denoiser_preset(model, "paper"),
            featurizer=REFERENCE_FEATURIZERS[model],
            cond_dropout="independent",
            **task_fields,
        ),  # fmt: skip
        "a2p": DiffusionTaskConfig(model=denoiser_preset(model, "a2p"), **task_fields),
        "debug": DiffusionTaskConfig(model=denoiser_preset(model, "debug"), **task_fields),
    }


def _train_presets(model: str) -> dict[str, TrainConfig]:
    """`paper`: the reference's recipe (`PAPER_RECIPES`); `a2p`: a2p's defaults (EMA, bf16, clip 1, cosine)."""
    return {"paper": paper_recipe(model), "a2p": TrainConfig()}


@register_task("face")
class FaceTask(DiffusionTask):
    """Face-code diffusion: denoises (T, 256) codes; missing face frames are masked out of the loss."""

    motion_key, mask_key, uses_guide = "face", "face_mask", False
    presets = _presets("face")
    train_presets = _train_presets("face")
    default_preset = "paper"


@register_task("body")
class BodyTask(DiffusionTask):
    """Body-pose diffusion with 1 fps guide poses and the velocity loss (lambda_vel = 2)."""

    motion_key, mask_key, uses_guide = "body", "mask", True
    presets = _presets("body", lambda_vel=2.0)
    train_presets = _train_presets("body")
    default_preset = "paper"
