"""Counting forward FLOPs with PyTorch's own counter (`torch.utils.flop_counter.FlopCounterMode`).

The counter sees matrix multiplications, convolutions and attention (2 FLOPs per multiply-add:
a (m, k) @ (k, n) product is 2 m n k); element-wise work, norms, softmax outside fused attention
and FFTs count zero. That is the usual convention for model FLOPs, and what the figures mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, as `FlopCounterMode` counts them."""
    flops, _ = flops_and_result(fn)
    return flops


def flops_and_result(fn: Callable[[], T]) -> tuple[int, T]:
    """FLOPs of one call of `fn` and what it returned, so a warm-up call can also be the count."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def format_count(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M': three significant decimals with a k/M/G/T suffix; None -> '-'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
