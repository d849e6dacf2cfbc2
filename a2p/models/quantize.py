"""Residual vector quantization with EMA codebooks that stay identical across data-parallel ranks.

A codebook of K vectors learns by exponential moving averages of the vectors assigned to each
code (van den Oord et al., 2017, "Neural Discrete Representation Learning", App. A.1):

    N_k <- decay * N_k + (1 - decay) * n_k,     m_k <- decay * m_k + (1 - decay) * sum_{i -> k} z_i,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K * eps) * sum_j N_j   (Laplace smoothing),

initialised by k-means on the first training batch (N_k its cluster's count, at least a floor;
m_k the centroid times N_k, or the bare centroid as in the reference) and with dead codes
restarted on vectors of the current batch. A code is dead when its usage N_k, after the step's
update, falls below a fraction of the mean usage sum_j N_j / K, or below an absolute count (the
reference's rule, which depends on the batch size); each rule is off at 0. Restarted, a code gets
the mean usage, so under the fraction rule an unused code restarts again only once its usage has
decayed that far (log(fraction) / log(decay) steps, about 300 for 0.05 and 0.99), whatever the
batch size; under the absolute rule it restarts every step until it is used, if the mean usage
is below the threshold. Residual quantization (Zeghidour et al., 2021, "SoundStream", Alg. 1)
quantizes z with the first codebook, what is left with the second, and so on; the code vectors
of all levels sum to the quantized vector.

Data parallelism: every rank must hold the same codebook. The per-code counts and sums n_k and
sum z_i pass through an injected `all_reduce` (an in-place sum over ranks) before they enter the
averages, so each rank applies the same update as one process on the whole batch. What is drawn
from data (k-means seeds, restarted codes) is drawn on every rank and overwritten by rank 0's
draw through an injected `broadcast`. Both default to no-ops: one process needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.config.vq import KMeansSum

Collective = Callable[[Tensor], None]
"""An in-place collective on one tensor: `torch.distributed.all_reduce` (sum), or a broadcast from rank 0."""

LAPLACE_EPS = 1e-5
"""Additive smoothing of the EMA code counts, so an unused code never divides by zero."""


def no_op(tensor: Tensor) -> None:
    """The collective of a single process: leaves the tensor as it is."""
    return None


def _perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code usage counts (K,): K when all codes are used evenly, 1 when one is."""
    probs = counts / counts.sum().clamp(min=1e-12)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-12))).sum())


class EMACodebook(nn.Module):
    """One codebook of `codes` vectors of width `dim`, learnt by EMA of assigned vectors, not by gradients."""

    def __init__(
        self,
        codes: int,
        dim: int,
        decay: float,
        dead_fraction: float,
        kmeans_iters: int,
        *,
        dead_threshold: float = 0.0,
        kmeans_count_floor: float = 1.0,
        kmeans_sum: KMeansSum = "count_weighted",
    ) -> None:
        super().__init__()
        if kmeans_sum not in ("count_weighted", "centroid"):
            raise ValueError(f"kmeans_sum must be 'count_weighted' or 'centroid', got {kmeans_sum!r}")
        self.codes, self.dim, self.decay = codes, dim, decay
        self.dead_fraction, self.dead_threshold = dead_fraction, dead_threshold
        self.kmeans_iters = kmeans_iters
        self.kmeans_count_floor = kmeans_count_floor
        self.kmeans_sum = kmeans_sum
        self.register_buffer("embed", torch.randn(codes, dim))
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialized", torch.tensor(False))
        # Mirrors `initialized` on the host once it has been seen true, so training steps do not
        # read a device flag (a synchronisation) every call; loading a state dict clears it.
        self._known_initialized = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether k-means has run (or a trained codebook was loaded)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    @torch.no_grad()
    def assign(self, x: Tensor) -> Tensor:
        """Index (N,) of the nearest code (Euclidean) of each row of x (N, dim)."""
        return _nearest(x, self.embed)

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors (..., dim) of indices codes (...)."""
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def kmeans_init(self, x: Tensor, weight: Tensor, all_reduce: Collective, broadcast: Collective) -> None:
        """Lloyd's k-means on the rows of x (N, dim) whose weight (N,) is 1, over all ranks.

        Seeds are distinct rows of rank 0's batch (repeated only when it has fewer rows than
        codes); every Lloyd step sums counts and sums over ranks, so ranks agree throughout.
        """
        rows = x[weight > 0]
        rows = rows if rows.shape[0] else x
        if rows.shape[0] >= self.codes:
            picks = torch.randperm(rows.shape[0], device=x.device)[: self.codes]
        else:
            picks = torch.randint(rows.shape[0], (self.codes,), device=x.device)
        centroids = rows[picks].clone()  # (K, dim)
        broadcast(centroids)
        counts = torch.zeros(self.codes, device=x.device, dtype=x.dtype)
        for _ in range(self.kmeans_iters):
            counts, sums = _assigned_sums(x, _nearest(x, centroids), weight, self.codes, all_reduce)
            filled = counts > 0
            centroids = torch.where(filled[:, None], sums / counts.clamp(min=1e-12)[:, None], centroids)
        # A floor of 1 keeps a code that k-means left empty where it is until it is used or
        # restarted. At 0 (the reference's) such a code, unused, collapses to the origin at the
        # first EMA step, or, with bare-centroid sums, flies off to about decay / LAPLACE_EPS
        # times its centroid and drifts back only as decay ** steps (about 1000 steps at 0.99).
        self.cluster_size.copy_(counts.clamp(min=self.kmeans_count_floor))
        self.embed.copy_(centroids)
        if self.kmeans_sum == "count_weighted":
            self.embed_sum.copy_(centroids * self.cluster_size[:, None])
        else:
            self.embed_sum.copy_(centroids)
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def update(
        self, x: Tensor, codes: Tensor, weight: Tensor, all_reduce: Collective, broadcast: Collective
    ) -> tuple[Tensor, Tensor]:
        """EMA step from the rows x (N, dim) assigned to codes (N,), rows weighted by weight (N,) in {0, 1}.

        Returns the counts (K,) of this batch summed over ranks and the mask (K,) of codes restarted.
        """
        counts, sums = _assigned_sums(x, codes, weight, self.codes, all_reduce)
        # decay * N + (1 - decay) * n in the reference's own operations (its ema_inplace), which
        # round differently from lerp_: the `paper` codebooks then equal the reference's bit for bit
        # (tests/test_vq.py).
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + LAPLACE_EPS) / (total + self.codes * LAPLACE_EPS) * total
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        dead = self.dead_codes()  # (K,), the same on every rank since the statistics are
        if self.dead_fraction > 0 or self.dead_threshold > 0:
            self._restart(x, weight, dead, broadcast)
        return counts, dead

    def dead_codes(self) -> Tensor:
        """Mask (K,) of the codes whose EMA usage is below `dead_fraction` of the mean code's or below `dead_threshold`."""
        dead = torch.zeros_like(self.cluster_size, dtype=torch.bool)
        # The rules are chosen on host floats and applied on the device: no synchronisation.
        if self.dead_fraction > 0:
            dead |= self.cluster_size < self.dead_fraction * (self.cluster_size.sum() / self.codes)
        if self.dead_threshold > 0:
            dead |= self.cluster_size < self.dead_threshold
        return dead

    def _restart(self, x: Tensor, weight: Tensor, dead: Tensor, broadcast: Collective) -> None:
        """Move the dead codes onto random valid rows of rank 0's batch, with the mean usage."""
        # Drawn for every code whether dead or not: no host synchronisation, one broadcast per step.
        chances = weight + (weight.sum() == 0).to(weight.dtype)  # every row when none is valid
        replacement = x[torch.multinomial(chances, self.codes, replacement=True)]  # (K, dim)
        broadcast(replacement)
        usage = self.cluster_size.sum() / self.codes
        self.embed.copy_(torch.where(dead[:, None], replacement, self.embed))
        self.embed_sum.copy_(torch.where(dead[:, None], replacement * usage, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, usage, self.cluster_size))


def _nearest(x: Tensor, embed: Tensor) -> Tensor:
    """Index (N,) of the row of embed (K, D) nearest to each row of x (N, D)."""
    distances = embed.pow(2).sum(1)[None] - 2 * x @ embed.t()  # (N, K), ||x||^2 dropped: same argmin
    return distances.argmin(dim=1)


def _assigned_sums(
    x: Tensor, codes: Tensor, weight: Tensor, num_codes: int, all_reduce: Collective
) -> tuple[Tensor, Tensor]:
    """Per-code count (K,) and sum (K, D) of the weighted rows of x (N, D), summed over ranks in one call."""
    onehot = F.one_hot(codes, num_codes).to(x.dtype) * weight[:, None]  # (N, K)
    stats = torch.cat((onehot.sum(0)[:, None], onehot.t() @ x), dim=1)  # (K, 1 + D)
    all_reduce(stats)
    return stats[:, 0], stats[:, 1:]


class Quantized(NamedTuple):
    """What `ResidualVQ.forward` returns."""

    quantized: Tensor
    """(B, T, D) sum of the chosen code vectors, with straight-through gradients to z."""
    codes: Tensor
    """(B, T, L) long code indices, level l in [..., l]."""
    commitment: Tensor
    """Scalar mean over levels of ||residual_l - sg(q_l)||^2 on valid rows."""
    stats: dict[str, Tensor]
    """Per level l: `perplexity_l{l}` of this batch's codes and `dead_codes_l{l}` (restarted in training)."""


class ResidualVQ(nn.Module):
    """`levels` EMA codebooks, each quantizing what the previous levels left over.

    In training mode a forward pass also learns: k-means on the first batch, then one EMA step and
    dead-code restart per call. `encode` and `decode_codes` never learn.
    """

    def __init__(
        self,
        codes: int,
        dim: int,
        levels: int,
        *,
        decay: float = 0.99,
        dead_fraction: float = 0.05,
        dead_threshold: float = 0.0,
        kmeans_iters: int = 10,
        kmeans_count_floor: float = 1.0,
        kmeans_sum: KMeansSum = "count_weighted",
        all_reduce: Collective | None = None,
        broadcast: Collective | None = None,
    ) -> None:
        super().__init__()
        self.codebooks = nn.ModuleList(
            EMACodebook(
                codes,
                dim,
                decay,
                dead_fraction,
                kmeans_iters,
                dead_threshold=dead_threshold,
                kmeans_count_floor=kmeans_count_floor,
                kmeans_sum=kmeans_sum,
            )
            for _ in range(levels)
        )
        self.all_reduce: Collective = no_op
        self.broadcast: Collective = no_op
        self.set_collectives(all_reduce, broadcast)

    def set_collectives(
        self, all_reduce: Collective | None = None, broadcast: Collective | None = None
    ) -> None:
        """Inject the data-parallel collectives: an in-place sum over ranks and a broadcast from rank 0."""
        self.all_reduce = all_reduce or no_op
        self.broadcast = broadcast or no_op

    def compute_dtype(self) -> torch.dtype:
        """Precision of distances and statistics: the codebooks' (float64 in a float64 model), at least float32."""
        return torch.promote_types(self.codebooks[0].embed.dtype, torch.float32)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> Quantized:
        """Quantize z (B, T, D); rows whose mask (B, T) is False neither learn nor count in losses."""
        batch_shape = z.shape[:-1]
        weight = (
            torch.ones(batch_shape, device=z.device) if mask is None else mask.to(z.device, torch.float32)
        ).reshape(-1)  # (N,)
        denom = weight.sum().clamp(min=1.0)
        learn = self.training
        # Distances and EMA statistics in at least float32, also under autocast: bf16 argmins pick wrong codes.
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, z.shape[-1]).to(self.compute_dtype())  # (N, D)
            residual = flat
            quantized = torch.zeros_like(flat)
            codes, commitments, stats = [], [], {}
            for level, book in enumerate(self.codebooks):
                if learn and not book.is_initialized():
                    book.kmeans_init(residual.detach(), weight, self.all_reduce, self.broadcast)
                index = book.assign(residual)  # (N,)
                chosen = book.lookup(index)  # (N, D), no gradient: codebooks learn by EMA
                if learn:
                    counts, dead = book.update(
                        residual.detach(), index, weight, self.all_reduce, self.broadcast
                    )
                else:
                    counts = torch.bincount(index, weight, minlength=book.codes)
                    dead = book.dead_codes()
                commitments.append(((residual - chosen).pow(2).mean(-1) * weight).sum() / denom)
                stats[f"perplexity_l{level}"] = _perplexity(counts)
                stats[f"dead_codes_l{level}"] = dead.sum().float()
                quantized = quantized + chosen
                # Later residuals are detached, as in the reference: only the first level's
                # commitment reaches the encoder (its authors found deeper commitment gradients hurt).
                residual = (residual - chosen).detach()
                codes.append(index)
            straight_through = flat + (quantized - flat).detach()
        return Quantized(
            straight_through.view_as(z).to(z.dtype),
            torch.stack(codes, dim=-1).view(*batch_shape, -1),
            torch.stack(commitments).mean(),
            stats,
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Codes (B, T, L) of z (B, T, D); never learns."""
        residual = z.reshape(-1, z.shape[-1]).to(self.compute_dtype())
        codes = []
        for book in self.codebooks:
            index = book.assign(residual)
            residual = residual - book.lookup(index)
            codes.append(index)
        return torch.stack(codes, dim=-1).view(*z.shape[:-1], -1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Sum over levels of the code vectors of codes (B, T, L) -> (B, T, D)."""
        out = self.codebooks[0].lookup(codes[..., 0])
        for level in range(1, len(self.codebooks)):
            out = out + self.codebooks[level].lookup(codes[..., level])
        return out
