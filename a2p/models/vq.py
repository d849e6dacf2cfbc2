"""The body residual VQ-VAE that tokenizes 1 fps keyframe poses (after the reference's model/vqvae.py).

keyframes (B, T_k, 104) -> temporal conv encoder -> z (B, T_k, code_dim) -> residual VQ over
`levels` EMA codebooks -> codes (B, T_k, levels) -> sum of code vectors -> conv decoder.

Codebooks learn by exponential moving averages of assigned vectors (van den Oord et al. 2017,
App. A.1), with Laplace-smoothed counts, k-means initialisation on the first training batch and
restart of dead codes on data. Under data parallelism every rank must hold the same codebook:
the statistics pass through an injected `all_reduce` (in-place sum over ranks), and whatever is
drawn from data (k-means seeds, restarted codes) is taken on rank 0 and sent by an injected
`broadcast`. Without a process group both default to no-ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.config.vq import VQConfig

Collective = Callable[[Tensor], None]
"""An in-place collective on one tensor (e.g. `torch.distributed.all_reduce`)."""

LAPLACE_EPS = 1e-5


def _no_op(tensor: Tensor) -> None:
    return None


class EMACodebook(nn.Module):
    """One codebook of `codes` vectors of width `dim`, learnt by EMA rather than by gradients."""

    def __init__(self, codes: int, dim: int, decay: float, dead_threshold: float, kmeans_iters: int) -> None:
        super().__init__()
        self.codes, self.dim, self.decay = codes, dim, decay
        self.dead_threshold, self.kmeans_iters = dead_threshold, kmeans_iters
        self.register_buffer("embed", torch.randn(codes, dim))
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def assign(self, x: Tensor) -> Tensor:
        """Index (N,) of the nearest code of each row of x (N, dim)."""
        distances = (
            x.pow(2).sum(1, keepdim=True) - 2 * x @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        )  # (N, K)
        return distances.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def kmeans_init(self, x: Tensor, all_reduce: Collective, broadcast: Collective, generator=None) -> None:
        """Lloyd's k-means on x (N, dim): seeds from rank 0's rows, statistics summed over ranks."""
        picks = torch.randint(x.shape[0], (self.codes,), device=x.device, generator=generator)
        centroids = x[picks].clone()
        broadcast(centroids)
        for _ in range(self.kmeans_iters):
            self.embed.copy_(centroids)
            onehot = F.one_hot(self.assign(x), self.codes).type(x.dtype)  # (N, K)
            counts, sums = onehot.sum(0), onehot.t() @ x
            all_reduce(counts)
            all_reduce(sums)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
        self.embed.copy_(centroids)
        self.embed_sum.copy_(centroids)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(
        self, x: Tensor, codes: Tensor, all_reduce: Collective, broadcast: Collective, generator=None
    ) -> int:
        """EMA update from the rows x (N, dim) assigned to `codes` (N,); returns the codes restarted."""
        onehot = F.one_hot(codes, self.codes).type(x.dtype)  # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ x
        all_reduce(counts)
        all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + LAPLACE_EPS) / (total + self.codes * LAPLACE_EPS) * total
        self.embed.copy_(self.embed_sum / smoothed[:, None])

        dead = self.cluster_size < self.dead_threshold
        restarted = int(dead.sum())
        if restarted:
            # Restart dead codes on data rows drawn on rank 0 and shared, so ranks stay identical.
            picks = torch.randint(x.shape[0], (self.codes,), device=x.device, generator=generator)
            replacement = x[picks].clone()
            broadcast(replacement)
            self.embed[dead] = replacement[dead]
            self.embed_sum[dead] = replacement[dead] * self.dead_threshold
            self.cluster_size[dead] = self.dead_threshold
        return restarted


class ResidualVQ(nn.Module):
    """`levels` codebooks, each quantizing what the previous levels left over."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.codebooks = nn.ModuleList(
            EMACodebook(
                config.codes, config.code_dim, config.decay, config.dead_threshold, config.kmeans_iters
            )
            for _ in range(config.levels)
        )
        self.all_reduce: Collective = _no_op
        self.broadcast: Collective = _no_op

    def set_collectives(
        self, all_reduce: Collective | None = None, broadcast: Collective | None = None
    ) -> None:
        """Inject the data-parallel collectives (sum in place; broadcast from rank 0)."""
        self.all_reduce = all_reduce or _no_op
        self.broadcast = broadcast or _no_op

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize z (B, T, D): (quantized (B, T, D), codes (B, T, L), stats). Learns in training mode."""
        flat = z.reshape(-1, z.shape[-1]).float()  # (N, D)
        residual, quantized = flat, torch.zeros_like(flat)
        codes, stats = [], {}
        for level, codebook in enumerate(self.codebooks):
            if self.training and not bool(codebook.initialized):
                codebook.kmeans_init(residual, self.all_reduce, self.broadcast)
            index = codebook.assign(residual)
            if self.training:
                restarted = codebook.update(residual, index, self.all_reduce, self.broadcast)
                stats[f"dead_codes_l{level}"] = torch.tensor(float(restarted))
                index = codebook.assign(residual)
            chosen = codebook.lookup(index)
            quantized = quantized + chosen
            residual = residual - chosen
            usage = torch.bincount(index, minlength=codebook.codes).float()
            probs = usage / usage.sum()
            stats[f"perplexity_l{level}"] = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
            codes.append(index)
        return quantized.view_as(z).to(z.dtype), torch.stack(codes, dim=-1).view(*z.shape[:-1], -1), stats

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Sum of the code vectors of codes (B, T, L) -> (B, T, D)."""
        return sum(cb.lookup(codes[..., level]) for level, cb in enumerate(self.codebooks))


def _conv_stack(in_dim: int, width: int, out_dim: int, blocks: int) -> nn.Sequential:
    """Conv1d in -> `blocks` residual dilated conv blocks -> conv out; time length is kept."""
    layers: list[nn.Module] = [nn.Conv1d(in_dim, width, 3, padding=1)]
    for block in range(blocks):
        layers.append(_ResBlock(width, dilation=3**block))
    layers += [nn.ReLU(), nn.Conv1d(width, out_dim, 3, padding=1)]
    return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
            nn.ReLU(),
            nn.Conv1d(width, width, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class BodyVQ(nn.Module):
    """Encoder, residual VQ and decoder over keyframe poses (B, T_k, pose_dim)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _conv_stack(config.pose_dim, config.width, config.code_dim, config.blocks)
        self.quantizer = ResidualVQ(config)
        self.decoder = _conv_stack(config.code_dim, config.width, config.pose_dim, config.blocks)

    def encode_latent(self, x: Tensor) -> Tensor:
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)  # (B, T_k, code_dim)

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.decoder(z.transpose(1, 2)).transpose(1, 2)  # (B, T_k, pose_dim)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (B, T_k, levels) of keyframes x (B, T_k, pose_dim)."""
        return self.quantizer(self.encode_latent(x))[1]

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Keyframes (B, T_k, pose_dim) of codes (B, T_k, levels)."""
        return self.decode_latent(self.quantizer.decode_codes(codes))

    def forward(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """(reconstruction, losses {recon, commit, loss}, stats) of x (B, T_k, D); mask (B, T_k) valid keyframes."""
        z = self.encode_latent(x)
        quantized, _, stats = self.quantizer(z)
        x_hat = self.decode_latent(z + (quantized - z).detach())  # straight-through estimator
        weight = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.float()
        denom = weight.sum().clamp(min=1.0)
        recon = ((x_hat - x).pow(2).mean(-1) * weight).sum() / denom
        commit = ((z - quantized.detach()).pow(2).mean(-1) * weight).sum() / denom
        loss = recon + self.config.commitment * commit
        return x_hat, {"loss": loss, "recon": recon.detach(), "commit": commit.detach()}, stats


def build_vq(config: VQConfig) -> BodyVQ:
    """The VQ-VAE described by `config`, on the current default device, in float32."""
    return BodyVQ(config)
