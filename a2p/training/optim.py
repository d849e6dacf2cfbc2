"""The optimizer and the learning-rate schedule every task trains with (torchtitan's components)."""

from __future__ import annotations

import math

import torch
from torch import nn

from a2p.config.train import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based): linear warm-up, then the decay."""
    sched = config.schedule
    if sched.warmup_steps and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    if sched.kind == "constant":
        return 1.0
    span = max(config.schedule_steps - sched.warmup_steps, 1)
    progress = min(max(step - sched.warmup_steps, 0) / span, 1.0)
    return sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel on CUDA when `fused` is auto or on."""
    opt = config.optimizer
    fused = opt.fused == "on" or (opt.fused == "auto" and device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay, fused=fused or None
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a scheduler stepped once per optimizer step.

    It stays out of `accelerator.prepare` (Accelerate would step it once per process) and sets the
    LR on the torch optimizer's param groups, which DeepSpeed's ZeRO optimizer steps too.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
