"""Running mean and variance that combine exactly across scenes, workers and array tasks.

Chan, Golub and LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
sample variances": two sets' (count, mean, sum of squared deviations) merge without revisiting
the data, and without the cancellation of a sum-of-squares formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STD_FLOOR = 1e-4
"""Smallest standard deviation a normalization divides by (constant channels would blow up)."""


@dataclass
class Moments:
    """count, mean and M2 (sum of squared deviations from the mean) per channel, in float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of the rows of `values` (N, D)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[0] == 0:
            return cls.empty(values.shape[1])
        mean = values.mean(axis=0)
        return cls(values.shape[0], mean, ((values - mean) ** 2).sum(axis=0))

    def combine(self, other: Moments) -> Moments:
        """Moments of the union of both sets."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return Moments(count, mean, m2)

    def std(self, floor: float = STD_FLOOR) -> np.ndarray:
        """Population standard deviation, floored at `floor`."""
        variance = self.m2 / max(self.count, 1)
        return np.maximum(np.sqrt(variance), floor)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Moments:
        return cls(
            int(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64)
        )
