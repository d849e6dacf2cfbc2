"""Settings of the task-agnostic trainer: optimizer, schedule, precision, EMA, checkpoints, logging.

A run's full config is `{"train": TrainConfig, "task": <the task's own config>}`, built by
`a2p.training.tasks.run_config_class(task_name)`; `--set train.optimizer.lr=3e-4` reaches in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from a2p.errors import ConfigError

Backend = Literal["ddp", "deepspeed"]
"""How gradients are synchronised: plain data parallel, or a DeepSpeed ZeRO config."""

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


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per optimizer step: linear warm-up, then cosine decay or constant."""

    kind: Literal["cosine", "constant"] = "cosine"
    """Shape after warm-up."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to the peak rate."""
    total_steps: int = 0
    """Length of the cosine decay in optimizer steps (warm-up included); 0: `train.max_steps`."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay as a fraction of the peak rate."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ConfigError("train.schedule.warmup_steps and total_steps must not be negative")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.schedule.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights, updated once per optimizer step."""

    enabled: bool = True
    """Keep an EMA copy (inference exports use it)."""
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
    grad_accum: int = 1
    """Micro-steps whose gradients are summed before one optimizer step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: never clip; the norm is logged either way)."""
    precision: Precision = "bf16"
    """`bf16` autocasts forward passes (DeepSpeed: bf16 weights); `fp32` is exact and reproducible."""
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
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be positive")
        if self.grad_clip < 0.0:
            raise ConfigError(f"train.grad_clip must not be negative, got {self.grad_clip}")
        if self.preempt_check_interval < 1:
            raise ConfigError("train.preempt_check_interval must be positive")
        if self.backend == "deepspeed" and not self.deepspeed_config:
            raise ConfigError("train.backend is 'deepspeed' but train.deepspeed_config names no JSON file")

    @property
    def schedule_steps(self) -> int:
        """Optimizer steps the learning-rate schedule spans."""
        return self.schedule.total_steps or self.max_steps
