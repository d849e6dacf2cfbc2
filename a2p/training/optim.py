"""The optimizer and the learning-rate schedule every task trains with (torchtitan's components)."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from a2p.config.train import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR while optimizer step `step` (0-based) is taken: warm-up, then the decay.

    Warm-up over W = `warmup_steps`:
    - `linear`: (s + 1) / W for s < W, then 1;
    - `reference` (train_vq, train_guide): lr (i + 1) / (W + 1) at warm-up iteration i, for
      i = `warmup_first` .. W - 1 (step s is iteration s + `warmup_first`). The rate is then held
      at W / (W + 1): the reference's MultiStepLR multiplies the rate the warm-up left behind.

    After it, the factor `peak` (1, or W / (W + 1)) times: 1 (`constant`); gamma to the number of
    milestones <= s (`step`: torch's MultiStepLR stepped once after every optimizer step, so a
    milestone m first lowers step m); or the cosine from 1 to `min_lr_ratio` over the steps left
    of `schedule_steps` (`cosine`).
    """
    sched = config.schedule
    width = sched.warmup_steps
    reference = sched.warmup == "reference"
    if step < sched.warmup_length:
        if reference:
            return (step + sched.warmup_first + 1) / (width + 1)
        return (step + 1) / width
    peak = width / (width + 1) if reference and width else 1.0
    if sched.kind == "constant":
        return peak
    if sched.kind == "step":
        return peak * sched.gamma ** bisect.bisect_right(sched.milestones, step)
    span = max(config.schedule_steps - sched.warmup_length, 1)
    progress = min(max(step - sched.warmup_length, 0) / span, 1.0)
    cosine = sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * cosine


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
