"""The `vq` and `guide` tasks: the body keyframe tokenizer and the audio-to-token transformer.

`vq` trains the residual VQ-VAE on the 1 fps keyframes of shard crops (its codebooks learn by EMA,
with statistics summed over data-parallel ranks). `guide` trains the guide transformer on the
tokens a trained, frozen VQ gives those keyframes, conditioned on the crop's audio features; it
needs the VQ (`--vq RUN_OR_EXPORT`, i.e. `task.vq`) before any compute.

Presets: `paper` trains as the reference (fixed 600-frame crops, `PAPER_RECIPES`' optimizer and
schedule); `a2p` keeps the same sizes with random crop lengths and a2p's trainer defaults;
`debug` is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.config.guide import GuideConfig, guide_preset
from a2p.config.train import TrainConfig, paper_recipe
from a2p.config.vq import VQConfig, vq_preset
from a2p.constants import CROP_MAX_FRAMES, CROP_MIN_FRAMES
from a2p.errors import ConfigError
from a2p.training.audio_inputs import AudioInputs
from a2p.training.tasks import ResumableIterable, Task, TaskContext, register_task

CropLengths = Literal["random", "fixed"]
"""Training crop lengths: uniform in [CROP_MIN_FRAMES, CROP_MAX_FRAMES) and padded, or always CROP_MAX_FRAMES."""


def crop_min_frames(crops: CropLengths) -> int:
    """Shortest training crop of the loader: CROP_MAX_FRAMES for fixed crops (the reference's add_padding=False)."""
    return CROP_MAX_FRAMES if crops == "fixed" else CROP_MIN_FRAMES


def _train_presets(model: str) -> dict[str, TrainConfig]:
    """`paper`: the reference's recipe (`PAPER_RECIPES`); `a2p`: a2p's defaults (EMA, bf16, clip 1, cosine)."""
    return {"paper": paper_recipe(model), "a2p": TrainConfig()}


@dataclass
class VQTaskConfig:
    """The body VQ-VAE and its data."""

    model: VQConfig = field(default_factory=VQConfig)
    """The VQ-VAE."""
    crops: CropLengths = "random"
    """`fixed`: every crop 600 frames, 20 keyframes (the reference's train_vq); `random`: 400 to 599, padded."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 16
    """Unused: the global sample order permutes the whole split (kept so older run configs load)."""


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@register_task("vq")
class VQTask(Task):
    """Residual VQ-VAE on keyframes (B, 20, 104) of 600-frame crops, padded keyframes masked."""

    config_class = VQTaskConfig
    presets = {
        "paper": VQTaskConfig(model=vq_preset("paper"), crops="fixed"),
        "a2p": VQTaskConfig(model=vq_preset("a2p")),
        "debug": VQTaskConfig(model=vq_preset("debug")),
    }
    train_presets = _train_presets("vq")
    default_preset = "paper"

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        from a2p.data import build_train_loader

        if not ctx.data:
            raise ConfigError("the vq task needs --data SHARDS/PERSON")
        return build_train_loader(
            ctx.data,
            ctx.batch_size,
            seed=ctx.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            num_workers=self.config.num_workers,
            min_frames=crop_min_frames(self.config.crops),
            audio=False,
            features=False,
            units=ctx.units,
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        if dist.is_available() and dist.is_initialized():
            # Codebook statistics are summed over ranks; data-drawn codes come from rank 0.
            _unwrap(model).quantizer.set_collectives(dist.all_reduce, lambda t: dist.broadcast(t, 0))
        _, losses, stats = model(batch["keyframes"].float(), batch["keyframe_mask"])
        return {**losses, **{name: value.detach() for name, value in stats.items()}}

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"keyframes": float(batch["keyframe_mask"].sum())}


@dataclass
class GuideTaskConfig:
    """The guide transformer, the VQ whose tokens it learns, and its audio."""

    model: GuideConfig = field(default_factory=GuideConfig)
    """The guide transformer."""
    vq: str = ""
    """Trained VQ: a run directory or an `a2p export` file (`a2p train guide --vq ...`)."""
    featurizer: str = "mel"
    """Frozen audio front end (`DiffusionTaskConfig.featurizer`): `vq-wav2vec` is the reference's."""
    featurizer_weights: str | None = None
    """Its weights file: wav2vec2's, or vq-wav2vec's (fairseq's vq-wav2vec.pt or a released checkpoint)."""
    crops: CropLengths = "random"
    """`fixed`: every crop 600 frames, 20 keyframes (the reference's train_guide); `random`: 400 to 599, padded."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 16
    """Unused: the global sample order permutes the whole split (kept so older run configs load)."""


@register_task("guide")
class GuideTask(Task):
    """Next-token cross-entropy of the frozen VQ's codes of the crop's keyframes, given its audio."""

    config_class = GuideTaskConfig
    presets = {
        # the released architecture on vq-wav2vec features (whose weights it needs: --audio-weights)
        "paper": GuideTaskConfig(
            model=guide_preset("paper"), featurizer=REFERENCE_FEATURIZERS["guide"], crops="fixed"
        ),
        "a2p": GuideTaskConfig(model=guide_preset("a2p")),
        "debug": GuideTaskConfig(model=guide_preset("debug")),
    }
    train_presets = _train_presets("guide")
    default_preset = "paper"

    def __init__(self, config: GuideTaskConfig) -> None:
        super().__init__(config)
        if not config.vq:
            raise ConfigError("the guide task needs its trained VQ: --vq RUN_DIR_OR_EXPORT (task.vq)")
        from a2p.training.export import load_run_or_export

        self.vq = load_run_or_export(config.vq, expect_task="vq").model.requires_grad_(False)
        vq_config = self.vq.config
        if (vq_config.codes, vq_config.levels) != (config.model.codes, config.model.levels):
            raise ConfigError(
                f"{config.vq}: the VQ has {vq_config.levels} levels x {vq_config.codes} codes, but "
                f"task.model expects {config.model.levels} x {config.model.codes}"
            )
        self.audio = AudioInputs(
            config.featurizer,
            config.featurizer_weights,
            config.model.audio_dim,
            "task.model.audio_dim",
            "guide",
        )

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        return self.audio.loader(
            ctx,
            self.name,
            self.config.num_workers,
            min_frames=crop_min_frames(self.config.crops),
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        keyframes = batch["keyframes"].float()
        self.vq.to(keyframes.device)
        with torch.no_grad():
            codes = self.vq.encode(keyframes)  # (B, K, L)
        features = self.audio(batch, keyframes.device)
        keep = None
        if "sample_seed" in batch and model.training:  # the loader's global order: each row's own draw
            drop = _unwrap(model).config.cond_drop_prob
            keep = torch.tensor(
                [float(torch.rand(1, generator=torch.Generator().manual_seed(int(seed)))) >= drop
                 for seed in batch["sample_seed"].tolist()],
                device=keyframes.device,
            )  # fmt: skip
        return model(codes, features.to(keyframes.dtype), batch["keyframe_mask"], keep_mask=keep)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"keyframes": float(batch["keyframe_mask"].sum())}
