"""The toy regression MLP that proves the trainer without the real models (task `toy`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class ToyModelConfig:
    """Sizes of the toy MLP; the `toy` task's config holds these fields at its top level."""

    in_dim: int = 8
    """Input features."""
    hidden: int = 32
    """Hidden width of the MLP."""
    out_dim: int = 4
    """Regression targets."""
    dropout: float = 0.0
    """Dropout after the hidden layer (non-zero makes training consume the torch RNG)."""


def build_toy(config: ToyModelConfig) -> nn.Sequential:
    """in_dim -> hidden (tanh, dropout) -> out_dim."""
    c = config
    return nn.Sequential(
        nn.Linear(c.in_dim, c.hidden), nn.Tanh(), nn.Dropout(c.dropout), nn.Linear(c.hidden, c.out_dim)
    )
