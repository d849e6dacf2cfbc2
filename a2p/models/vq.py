"""The body residual VQ-VAE that tokenizes 1 fps keyframe poses (after the reference's model/vqvae.py).

keyframes (B, T_k, 104) -> causal temporal conv encoder -> z (B, T_k, code_dim) -> residual VQ over
`levels` EMA codebooks (`a2p.models.quantize`) -> codes (B, T_k, levels) -> sum of code vectors ->
causal temporal conv decoder -> keyframes (B, T_k, 104).

Both conv stacks are causal: the input is padded on the left once by the receptive field minus
one and the dilated convs are unpadded, so keyframe k depends on keyframes k - receptive_field + 1
.. k only (8 keyframes in `paper`). Gradients cross the quantizer by the straight-through
estimator; the codebooks learn by EMA, with statistics summed over data-parallel ranks through the
collectives injected with `BodyVQ(config, all_reduce=..., broadcast=...)` or
`BodyVQ.quantizer.set_collectives`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.config.vq import VQConfig
from a2p.models.quantize import Collective, ResidualVQ

NEGATIVE_SLOPE = 0.2
"""Slope of the leaky ReLUs between the convs (the reference's)."""


class CausalConvStack(nn.Module):
    """Causal 1-D convs over (B, C, T): dilated convs between optional 1x1 projections.

    The encoder is `1x1 in -> dilated convs` and the decoder `dilated convs -> 1x1 out`, each
    conv followed by a leaky ReLU except the last one.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        out_dim: int,
        kernel_size: int,
        dilations: tuple[int, ...],
        project_in: bool,
    ) -> None:
        super().__init__()
        convs: list[nn.Conv1d] = [nn.Conv1d(in_dim, width, 1)] if project_in else []
        for i, dilation in enumerate(dilations):
            c_in = width if project_in or i else in_dim
            c_out = out_dim if project_in and i == len(dilations) - 1 else width
            convs.append(nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation))
        if not project_in:
            convs.append(nn.Conv1d(width, out_dim, 1))
        self.convs = nn.ModuleList(convs)
        self.receptive_field = 1 + (kernel_size - 1) * sum(dilations)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, T) -> (B, C_out, T)."""
        x = F.pad(x, (self.receptive_field - 1, 0))
        for i, conv in enumerate(self.convs):
            if i:
                x = F.leaky_relu(x, NEGATIVE_SLOPE)
            x = conv(x)
        return x


class BodyVQ(nn.Module):
    """Encoder, residual VQ and decoder over keyframe poses (B, T_k, pose_dim)."""

    def __init__(
        self, config: VQConfig, all_reduce: Collective | None = None, broadcast: Collective | None = None
    ) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = CausalConvStack(c.pose_dim, c.width, c.code_dim, c.kernel_size, c.dilations, True)
        self.quantizer = ResidualVQ(
            c.codes,
            c.code_dim,
            c.levels,
            decay=c.decay,
            dead_fraction=c.dead_fraction,
            dead_threshold=c.dead_threshold,
            kmeans_iters=c.kmeans_iters,
            kmeans_count_floor=c.kmeans_count_floor,
            kmeans_sum=c.kmeans_sum,
            all_reduce=all_reduce,
            broadcast=broadcast,
        )
        self.decoder = CausalConvStack(c.code_dim, c.width, c.pose_dim, c.kernel_size, c.dilations, False)

    def encode_latent(self, x: Tensor) -> Tensor:
        """Latents (B, T_k, code_dim) of keyframes x (B, T_k, pose_dim)."""
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)

    def decode_latent(self, z: Tensor) -> Tensor:
        """Keyframes (B, T_k, pose_dim) of latents z (B, T_k, code_dim)."""
        return self.decoder(z.transpose(1, 2)).transpose(1, 2)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (B, T_k, levels), long, of keyframes x (B, T_k, pose_dim); never learns."""
        return self.quantizer.encode(self.encode_latent(x))

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Keyframes (B, T_k, pose_dim) of codes (B, T_k, levels)."""
        z = self.quantizer.decode_codes(codes)  # (B, T_k, code_dim), float32 codebooks
        return self.decode_latent(z.to(self.decoder.convs[0].weight.dtype))

    def _distance(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Reconstruction loss per keyframe, averaged over channels -> (B, T)."""
        if self.config.recon_loss == "mse":
            return (x_hat - x).pow(2).mean(-1)
        return F.smooth_l1_loss(x_hat, x, reduction="none").mean(-1)

    def forward(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Reconstruct keyframes x (B, T_k, pose_dim); mask (B, T_k) marks valid (unpadded) keyframes.

        Returns (x_hat (B, T_k, pose_dim), losses, stats): losses `loss` (recon + commitment *
        commit + velocity_weight * velocity) and detached `recon`, `commit`, `velocity`; stats
        per level `perplexity_l{l}` and `dead_codes_l{l}`. In training mode the codebooks learn
        from the valid keyframes only.
        """
        weight = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.device).float()
        z = self.encode_latent(x)  # (B, T_k, code_dim)
        quantized = self.quantizer(z, weight)
        x_hat = self.decode_latent(quantized.quantized)  # (B, T_k, pose_dim), straight-through
        denom = weight.sum().clamp(min=1.0)
        recon = (self._distance(x_hat, x) * weight).sum() / denom
        loss = recon + self.config.commitment * quantized.commitment
        velocity = torch.zeros((), device=x.device)
        if self.config.velocity_weight > 0 and x.shape[1] > 1:
            pairs = weight[:, 1:] * weight[:, :-1]  # (B, T_k - 1): both keyframes valid
            step = self._distance(x_hat[:, 1:] - x_hat[:, :-1], x[:, 1:] - x[:, :-1])
            velocity = (step * pairs).sum() / pairs.sum().clamp(min=1.0)
            loss = loss + self.config.velocity_weight * velocity
        losses = {
            "loss": loss,
            "recon": recon.detach(),
            "commit": quantized.commitment.detach(),
            "velocity": velocity.detach(),
        }
        return x_hat, losses, quantized.stats


def build_vq(
    config: VQConfig, all_reduce: Collective | None = None, broadcast: Collective | None = None
) -> BodyVQ:
    """The VQ-VAE described by `config`, on the current default device, in float32."""
    return BodyVQ(config, all_reduce, broadcast)
