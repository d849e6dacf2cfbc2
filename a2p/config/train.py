"""Settings of the task-agnostic trainer: optimizer, schedule, precision, EMA, checkpoints, logging.

A run's full config is `{"train": TrainConfig, "task": <the task's own config>}`, built by
`a2p.training.tasks.run_config_class(task_name)`; `--set train.optimizer.lr=3e-4` reaches in here.
The defaults are a2p's recipe; `PAPER_RECIPES` holds the reference's per model (the `paper` presets).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

from a2p.errors import ConfigError

Backend = Literal["ddp", "deepspeed"]
"""How gradients are synchronised: plain data parallel, or a DeepSpeed ZeRO config."""

Units = Literal["auto", "person", "train"]
"""Which normalization the data is read in: the person's `data_stats.pth` (`person`, the units of
the released checkpoints, kept in the manifest by `a2p data build`), the train split's moments
(`train`), or the person's when the shards have them (`auto`)."""

Precision = Literal["fp32", "bf16"]
"""Compute precision of forward and backward passes (bf16: autocast, weights stay fp32)."""


@dataclass
class OptimizerConfig:
    """AdamW hyper-parameters."""

    lr: float = 1e-4
    """Peak learning rate, reached at the end of warm-up."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moment decay rates (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay, applied to every parameter."""
    fused: Literal["auto", "on", "off"] = "auto"
    """Fused AdamW kernel: `auto` uses it on CUDA devices only."""

    def __post_init__(self) -> None:
        if self.lr <= 0.0:
            raise ConfigError(f"train.optimizer.lr must be positive, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.optimizer.betas must lie in [0, 1), got {self.betas}")
        if self.eps <= 0.0 or self.weight_decay < 0.0:
            raise ConfigError("train.optimizer.eps must be positive and weight_decay not negative")


ScheduleKind = Literal["cosine", "constant", "step"]
"""Shape of the rate after warm-up: cosine decay, constant, or step decay at milestones."""

WarmupKind = Literal["linear", "reference"]
"""Warm-up ramp: a2p's linear ramp to the peak, or the reference's `lr (i + 1) / (W + 1)` (see `lr_factor`)."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per optimizer step: a warm-up, then cosine decay, constant or step decay.

    Steps are 0-based optimizer steps; the factor of step s is the multiplier of `optimizer.lr`
    while step s is taken (`a2p.training.optim.lr_factor`).
    """

    kind: ScheduleKind = "cosine"
    """Shape after warm-up; `step` multiplies by `gamma` at each of `milestones` (torch's MultiStepLR)."""
    warmup_steps: int = 0
    """Warm-up length W: `linear` ramps over W steps; `reference` over W - `warmup_first` steps."""
    warmup: WarmupKind = "linear"
    """`linear`: (s + 1) / W, the peak at step W - 1; `reference`: (i + 1) / (W + 1), then held at W / (W + 1)."""
    warmup_first: int = 0
    """`reference` only: its first warm-up iteration i (train_vq starts at 1, train_guide at 0)."""
    milestones: tuple[int, ...] = ()
    """`step` only: increasing optimizer steps from which the rate is multiplied by `gamma` once more."""
    gamma: float = 0.1
    """`step` only: the factor applied at each milestone."""
    total_steps: int = 0
    """Length of the cosine decay in optimizer steps (warm-up included); 0: `train.max_steps`."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay as a fraction of the peak rate."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ConfigError("train.schedule.warmup_steps and total_steps must not be negative")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.schedule.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_first and (
            self.warmup != "reference" or not 0 <= self.warmup_first < self.warmup_steps
        ):
            raise ConfigError(
                "train.schedule.warmup_first needs warmup='reference' and must lie in [0, warmup_steps), got "
                f"{self.warmup_first} with warmup={self.warmup!r}, warmup_steps={self.warmup_steps}"
            )
        if self.milestones and self.kind != "step":
            raise ConfigError(f"train.schedule.milestones apply to kind='step' only, not {self.kind!r}")
        steps = list(self.milestones)
        if steps != sorted(set(steps)) or (steps and steps[0] < self.warmup_length):
            raise ConfigError(
                "train.schedule.milestones must be strictly increasing and not inside the warm-up "
                f"({self.warmup_length} steps), got {steps}"
            )
        if self.gamma <= 0.0:
            raise ConfigError(f"train.schedule.gamma must be positive, got {self.gamma}")

    @property
    def warmup_length(self) -> int:
        """Optimizer steps spent in the warm-up ramp."""
        return self.warmup_steps - self.warmup_first


@dataclass
class EMAConfig:
    """Exponential moving average of the weights, updated once per optimizer step."""

    enabled: bool = True
    """Keep an EMA copy (exports use it); a2p's addition, off in the `paper` recipes (the reference keeps none)."""
    decay: float = 0.9999
    """Weight of the old average in each update."""
    start_step: int = 0
    """Before this optimizer step the average is a plain copy of the weights."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"train.ema.decay must lie in [0, 1), got {self.decay}")
        if self.start_step < 0:
            raise ConfigError("train.ema.start_step must not be negative")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    interval: int = 1000
    """Optimizer steps between checkpoints (one is always written at the end and on preemption)."""
    keep: int = 3
    """Newest step directories kept; older ones are deleted (0: keep all)."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.keep < 0:
            raise ConfigError("train.checkpoint.interval must be positive and keep not negative")


@dataclass
class LogConfig:
    """Metrics, evaluation and the progress bar."""

    interval: int = 50
    """Optimizer steps between metric writes (the only steps that read values back from the device)."""
    eval_interval: int = 0
    """Optimizer steps between task evaluations (0: never; always at the end when positive)."""
    progress_bar: bool = True
    """Show a tqdm bar on rank 0."""
    tensorboard: bool = True
    """Write TensorBoard event files under RUN_DIR/tensorboard on rank 0."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.eval_interval < 0:
            raise ConfigError("train.log.interval must be positive and eval_interval not negative")


@dataclass
class TrainConfig:
    """Everything the trainer decides; the task's model, data and loss live in the task's config."""

    max_steps: int = 100_000
    """Optimizer steps of the whole run (a resumed run stops at the same step)."""
    batch_size: int = 8
    """Samples per device per micro-step (the global batch is this x ranks x grad_accum)."""
    global_batch_size: int = 0
    """Samples per optimizer step over all ranks; when set, each rank's batch is this / (ranks x
    grad_accum) and `batch_size` is not read, so a run resumed on another number of ranks sees
    the same global batches. 0: batch_size x ranks x grad_accum."""
    grad_accum: int = 1
    """Micro-steps whose gradients are summed before one optimizer step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: never clip; the norm is logged either way)."""
    max_skipped_steps: int = 10
    """Optimizer steps skipped for a non-finite loss or gradient (each with a warning naming its
    samples) before the run stops with an error; 0: stop at the first. Under DeepSpeed, whose
    engine cannot skip a step, the run always stops at the first."""
    precision: Precision = "bf16"
    """`bf16` (a2p's addition) autocasts forward passes (DeepSpeed: bf16 weights); `fp32` is the reference's."""
    tf32: bool = True
    """Allow TF32 matmuls on CUDA devices."""
    seed: int = 0
    """Seed of the model initialisation and of every rank's random streams."""
    backend: Backend = "ddp"
    """Gradient synchronisation: `ddp`, or `deepspeed` with the JSON in `deepspeed_config`."""
    deepspeed_config: str = ""
    """Path of a DeepSpeed JSON config (`ds_configs/...`), required when backend is `deepspeed`."""
    data: str = ""
    """Shard folder of one person (`SHARDS/PERSON`), handed to the task's data loader."""
    units: Units = "train"
    """Normalization of the data and of the export (`Units`): the reference's recipes read the
    person's data_stats.pth where the shards carry it (`auto`), a2p's the train split's moments."""
    dist_timeout_s: float = 1800.0
    """Seconds a collective waits for the other ranks before the run stops with an error (a stuck
    rank must not hang the job silently; long enough for the slowest step and evaluation)."""
    watchdog_s: float = 300.0
    """A rank warns, naming itself and the step, each time this many seconds pass without a
    finished step (0: never)."""
    preempt_check_interval: int = 1
    """Optimizer steps between the cross-rank check of the preemption flag (one tiny all-reduce)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    ema: EMAConfig = field(default_factory=EMAConfig)
    """Weight averaging."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint interval and retention."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics, evaluation, progress bar."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must not be negative, got {self.max_steps}")
        if self.max_skipped_steps < 0:
            raise ConfigError(f"train.max_skipped_steps must not be negative, got {self.max_skipped_steps}")
        if self.global_batch_size < 0:
            raise ConfigError(f"train.global_batch_size must not be negative, got {self.global_batch_size}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be positive")
        if self.grad_clip < 0.0:
            raise ConfigError(f"train.grad_clip must not be negative, got {self.grad_clip}")
        if self.dist_timeout_s <= 0 or self.watchdog_s < 0:
            raise ConfigError("train.dist_timeout_s must be positive and train.watchdog_s not negative")
        if self.preempt_check_interval < 1:
            raise ConfigError("train.preempt_check_interval must be positive")
        if self.backend == "deepspeed" and not self.deepspeed_config:
            raise ConfigError("train.backend is 'deepspeed' but train.deepspeed_config names no JSON file")

    def rank_batch_size(self, world_size: int) -> int:
        """Samples per rank per micro-step on `world_size` ranks (`global_batch_size` divided up)."""
        if not self.global_batch_size:
            return self.batch_size
        per_step = world_size * self.grad_accum
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size {self.global_batch_size} is not a multiple of ranks x "
                f"grad_accum = {world_size} x {self.grad_accum}"
            )
        return self.global_batch_size // per_step

    @property
    def schedule_steps(self) -> int:
        """Optimizer steps the learning-rate schedule spans."""
        return self.schedule.total_steps or self.max_steps


def _reference_recipe(
    max_steps: int,
    lr: float,
    betas: tuple[float, float],
    schedule: ScheduleConfig,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
) -> TrainConfig:
    """A reference training recipe: fp32 without TF32 matmuls, no EMA, batch 4 (the README's commands)."""
    return TrainConfig(
        max_steps=max_steps,
        batch_size=4,
        grad_clip=grad_clip,
        precision="fp32",
        tf32=False,
        optimizer=OptimizerConfig(lr=lr, betas=betas, weight_decay=weight_decay),
        schedule=schedule,
        ema=EMAConfig(enabled=False),
        units="auto",
    )


_DIFFUSION_BETAS = (0.9, 0.999)
_TOKEN_BETAS = (0.9, 0.99)

PAPER_RECIPES: dict[str, TrainConfig] = {
    # train/training_loop.py: AdamW(lr, weight_decay) with torch's default betas, lr_anneal_steps 0
    # (constant), no clipping or EMA; model000155000.pt / model000340000.pt are saved after step
    # index 155000 / 340000, i.e. after 155,001 / 340,001 optimizer steps.
    "face": _reference_recipe(155_001, 1e-4, _DIFFUSION_BETAS, ScheduleConfig(kind="constant")),
    "body": _reference_recipe(340_001, 1e-4, _DIFFUSION_BETAS, ScheduleConfig(kind="constant")),
    # train/train_vq.py: a warm-up loop over iterations 1..999 at lr (i + 1) / 1001, then 300,000
    # steps at 1000/1001 lr with MultiStepLR([300000], 0.05) stepped after each of them, so its
    # decay would start at global step 999 + 300000, after the last step of the run.
    "vq": _reference_recipe(
        300_999,
        1e-3,
        _TOKEN_BETAS,
        ScheduleConfig(
            kind="step",
            warmup_steps=1000,
            warmup="reference",
            warmup_first=1,
            milestones=(300_999,),
            gamma=0.05,
        ),
    ),  # fmt: skip
    # train/train_guide.py: lr (s + 1) / 5001 for steps 0..4999, then held at 5000/5001 lr, with
    # MultiStepLR([50000, 400000], 0.1) stepped after every step (warm-up included), `--gn` clipping
    # at 1; iter-0100000.pt is saved after step index 100000.
    "guide": _reference_recipe(
        100_001,
        2e-4,
        _TOKEN_BETAS,
        ScheduleConfig(
            kind="step", warmup_steps=5000, warmup="reference", milestones=(50_000, 400_000), gamma=0.1
        ),
        weight_decay=0.1,
        grad_clip=1.0,
    ),
}
"""The reference's training recipe per model (its train scripts and README commands): the `paper` presets.

a2p's additions (EMA weights for export, bf16 autocast, clipping at 1, cosine decay) are the
`TrainConfig` defaults, the `a2p` presets, and each stays available through `--set`.
"""


def paper_recipe(model: str) -> TrainConfig:
    """A fresh copy of the reference's training recipe of `model` (face, body, vq, guide)."""
    if model not in PAPER_RECIPES:
        raise ConfigError(f"no reference training recipe for {model!r} (known: {sorted(PAPER_RECIPES)})")
    return copy.deepcopy(PAPER_RECIPES[model])
