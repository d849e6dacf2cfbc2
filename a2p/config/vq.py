"""The body residual VQ-VAE: sizes, codebook learning and loss (`paper` after the reference's train_vq).

The reference trains `TemporalVertexCodec(n_vertices=104, latent_dim=64, categories=1024,
residual_depth=4)` (README: `--code_dim 1024 --output_emb_width 64 --depth 4 --commit 0.02
--loss_vel 0.0`), whose codebooks use decay 0.99 and 10 k-means iterations; its conv encoder and
decoder are as wide as the code vectors.

Its codebooks never restart a code, although they are built to: `EuclideanCodebook.forward`
(model/vqvae.py:215, at 449761e) moves the codes whose EMA count is below
`threshold_ema_dead_code = 2` onto batch rows (`expire_codes_`, :157-167), and then, in the same
step, overwrites every code vector with `embed_avg / smoothed cluster_size` (:216-224), which the
move never touched. Its k-means leaves the counts of empty clusters at 0 (`kmeans`, :83-93) and
sets the EMA code sums to the bare centroids, not centroid x count (`init_embed_`, :144-146).
`paper` computes exactly that: no restart, count floor 0, bare centroids. `a2p` restarts codes
whose usage falls below a fraction of the mean usage (the same in steps at any batch size, where
an absolute count depends on it) and starts the EMA from statistics that agree with k-means.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from a2p.constants import POSE_DIM
from a2p.errors import ConfigError

KMeansSum = Literal["count_weighted", "centroid"]
"""EMA code sums after k-means: each centroid times its k-means count, or the bare centroid (the reference's).

With bare centroids the sums disagree with the counts: at the first EMA step, on the rows k-means
saw, a code of count n moves to about decay / n + 1 - decay times its centroid, towards the origin.
"""


@dataclass
class VQConfig:
    """A causal temporal conv encoder/decoder around a residual VQ of `levels` EMA codebooks."""

    pose_dim: int = POSE_DIM
    """Width of one keyframe pose."""
    width: int = 64
    """Channels of the conv encoder and decoder (the reference's output_emb_width)."""
    dilations: tuple[int, ...] = (1, 2, 3, 1)
    """Dilations of the causal temporal convs of the encoder, and again of the decoder."""
    kernel_size: int = 2
    """Kernel size of those temporal convs."""
    code_dim: int = 64
    """Width of a code vector (the reference's output_emb_width)."""
    codes: int = 1024
    """Codes per codebook (the reference's code_dim)."""
    levels: int = 4
    """Residual quantization levels (the reference's depth)."""
    decay: float = 0.99
    """EMA decay of the codebook statistics."""
    dead_fraction: float = 0.05
    """Codes whose EMA usage falls below this fraction of the mean code's restart on data; 0: never."""
    dead_threshold: float = 0.0
    """Codes whose EMA usage falls below this many vectors per step restart on data (the reference's 2, made to work); 0: never."""
    kmeans_iters: int = 10
    """Lloyd iterations of the k-means initialisation on the first training batch."""
    kmeans_count_floor: float = 1.0
    """Least EMA usage a code starts from after k-means, so an empty cluster keeps its centroid (the reference's: 0)."""
    kmeans_sum: KMeansSum = "count_weighted"
    """EMA code sums after k-means: centroid x count (codes stay put) or the bare centroid (the reference's, see KMeansSum)."""
    commitment: float = 0.02
    """Weight of the commitment loss (the reference's --commit)."""
    recon_loss: Literal["smooth_l1", "mse"] = "smooth_l1"
    """Reconstruction loss per pose channel: Huber with threshold 1 (the reference's SmoothL1Loss) or squared error."""
    velocity_weight: float = 0.0
    """Weight of the same loss on keyframe-to-keyframe differences (the reference's --loss_vel, 0 in its README)."""

    def __post_init__(self) -> None:
        for name in ("pose_dim", "width", "kernel_size", "code_dim", "codes", "levels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vq.{name} must be positive, got {getattr(self, name)}")
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError(f"vq.dilations must be positive integers, got {list(self.dilations)}")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"vq.decay must lie in (0, 1), got {self.decay}")
        for name in ("kmeans_iters", "commitment", "velocity_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"vq.{name} must not be negative, got {getattr(self, name)}")
        # A NaN would pass `< 0` and silently never restart (or floor) anything.
        for name in ("dead_fraction", "dead_threshold", "kmeans_count_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"vq.{name} must be a finite number >= 0, got {value}")


VQ_PRESETS = {
    "paper": VQConfig(dead_fraction=0.0, dead_threshold=0.0, kmeans_count_floor=0.0, kmeans_sum="centroid"),
    "a2p": VQConfig(
        dead_fraction=0.05, dead_threshold=0.0, kmeans_count_floor=1.0, kmeans_sum="count_weighted"
    ),
    "debug": VQConfig(width=16, dilations=(1, 2), code_dim=8, codes=16, levels=2, kmeans_iters=3),
}
"""`paper`: the reference's train_vq (4 levels x 1024 codes of width 64, 64-wide convs), which a2p's
VQ computes exactly, codebook learning included: no restart (the reference's is overwritten in the
step that makes it, model/vqvae.py:215-224), k-means counts as they fall (0 for an empty cluster)
and bare centroids as the EMA sums. `a2p`: the same sizes with a2p's codebook learning: codes whose
usage drops below 5% of the mean restart on data, a rule that is the same in steps at any batch size,
and an empty k-means cluster starts from one vector at its centroid, so that it neither collapses to
the origin nor flies off at the first EMA step. `debug`: tiny, with a2p's codebook learning."""


def vq_preset(size: str) -> VQConfig:
    """A fresh copy of the named VQ preset."""
    if size not in VQ_PRESETS:
        raise ConfigError(f"unknown VQ size {size!r} (choose from {sorted(VQ_PRESETS)})")
    return dataclasses.replace(VQ_PRESETS[size])
