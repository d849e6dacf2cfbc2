"""Building blocks shared by the a2p networks.

Rotary position embeddings and the time axis they share (motion frames), multi-head attention
through `torch.nn.functional.scaled_dot_product_attention` with keys and values that can be
computed once and reused, an autoregressive key/value cache, FiLM modulation, the diffusion
timestep embedding, pre-norm transformer layers with FiLM, and the causal dilated 1-D conv stack
of the reference's body model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.constants import FEATURE_RATE_HZ, FPS

KeyValue = tuple[Tensor, Tensor]
"""Keys and values of one attention block, each (B, H, S, D_head)."""


class Rotation(NamedTuple):
    """Cosines and sines of rotary angles for a sequence of positions, each (S, D_head / 2)."""

    cos: Tensor
    sin: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Rotate channel pairs (i, i + D/2) of per-head queries or keys x (B, H, S, D_head)."""
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos), dim=-1)
        return rotated.to(x.dtype)


class InputRotation(NamedTuple):
    """The reference's rotary scheme: angles (S, W / 2) that rotate an attention block's *input*.

    Channel pairs (2i, 2i + 1) of the full width W rotate by position * freq_i before the query
    and key projections (values are projected from the unrotated input), as in the reference's
    `rotary_embedding_torch` (after lucidrains). Unlike per-head rotation after the projections,
    attention scores then do not depend on position offsets alone.
    """

    angles: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Rotate channel pairs (2i, 2i + 1) of x (B, S, W)."""
        angles = self.angles.to(x.dtype)
        cos, sin = angles.cos(), angles.sin()
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


class InputRotary(nn.Module):
    """The reference's rotary embedding (`positions: reference`): full width, interleaved, integer positions.

    Frequencies are computed exactly as the reference's, 1 / theta^(2i / W) in float32, so the
    angles at positions up to ~2000 agree to the last bit.
    """

    def __init__(self, width: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"rotary embeddings need an even width, got {width}")
        freqs = 1.0 / (theta ** (torch.arange(0, width, 2)[: width // 2].float() / width))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, positions: Tensor) -> InputRotation:
        """The rotation for positions (S,)."""
        return InputRotation(positions.to(self.freqs.dtype)[:, None] * self.freqs)


AnyRotation = Rotation | InputRotation
"""Either rotary scheme; `Attention` applies each where it belongs."""


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., RoFormer, 2021, eq. 34) on per-head queries and keys.

    Positions may be fractional, so sequences at different rates (30 fps motion, 100 Hz audio,
    1 fps keyframes) can share one time axis and attention scores depend on time offsets.
    """

    def __init__(self, head_dim: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> Rotation:
        """The rotation for positions (S,), in any unit shared by queries and keys."""
        angles = positions.float()[:, None] * self.inv_freq  # (S, D_head / 2)
        return Rotation(angles.cos(), angles.sin())


def audio_positions(length: int, device: torch.device) -> Tensor:
    """Times (length,) of 100 Hz audio features in motion frames: the centres of their sample blocks."""
    n = torch.arange(length, device=device, dtype=torch.float32)
    return (n + 0.5) * (FPS / FEATURE_RATE_HZ) - 0.5


class Attention(nn.Module):
    """Multi-head attention; queries come from x, keys and values from x or from a memory.

    The projections are exposed (`query`, `key_value`, `attend`) so a caller can compute the keys
    and values of a fixed memory once and reuse them for many queries (a diffusion sampler's
    condition, an autoregressive key/value cache).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, memory_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} does not split into {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(memory_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, H, S, D_head)

    def query(self, x: Tensor, rotation: AnyRotation | None = None) -> Tensor:
        """Per-head queries (B, H, T, D_head) of x (B, T, D), rotated when `rotation` is given."""
        if isinstance(rotation, InputRotation):
            return self._split_heads(self.to_q(rotation.apply(x)))
        q = self._split_heads(self.to_q(x))
        return rotation.apply(q) if rotation is not None else q

    def key_value(self, memory: Tensor, rotation: AnyRotation | None = None) -> KeyValue:
        """Per-head keys (rotated when `rotation` is given) and values of memory (B, S, D_memory)."""
        if isinstance(rotation, InputRotation):
            # Keys from the rotated memory, values from the memory itself.
            w_k, w_v = self.to_kv.weight.chunk(2)
            b_k, b_v = self.to_kv.bias.chunk(2)
            k = F.linear(rotation.apply(memory), w_k, b_k)
            return self._split_heads(k), self._split_heads(F.linear(memory, w_v, b_v))
        k, v = self.to_kv(memory).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        return (rotation.apply(k) if rotation is not None else k), v

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Attention of queries (B, H, T, D_head) over keys/values (B, H, S, D_head) -> (B, T, D)."""
        # Cached keys may have been computed outside autocast; the kernel needs one dtype.
        out = F.scaled_dot_product_attention(
            q,
            k.to(q.dtype),
            v.to(q.dtype),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, T, D_head)
        batch, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        rotation: AnyRotation | None = None,
        memory_rotation: AnyRotation | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Self-attention of x (B, T, D), or cross-attention to memory (B, S, D_memory) when given."""
        if memory is None:
            memory, memory_rotation = x, rotation
        k, v = self.key_value(memory, memory_rotation)
        return self.attend(self.query(x, rotation), k, v, mask=mask, is_causal=is_causal)


class KVCache:
    """Self-attention keys and values of the positions decoded so far, in buffers preallocated per layer."""

    def __init__(self, layers: int, capacity: int) -> None:
        self.keys: list[Tensor | None] = [None] * layers
        self.values: list[Tensor | None] = [None] * layers
        self.capacity = capacity
        self.length = 0

    def append(self, layer: int, k: Tensor, v: Tensor) -> KeyValue:
        """Store k, v (B, H, n, D) after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"key/value cache holds {self.capacity} positions, asked for {end}")
        if self.keys[layer] is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al., FiLM, 2018): x * (1 + scale(c)) + shift(c)."""

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Modulate x (B, T, D) by one conditioning vector per row, cond (B, C)."""
        scale, shift = self.to_scale_shift(cond)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return x * (1 + scale) + shift


def sinusoidal_embedding(
    t: Tensor, dim: int, max_period: float = 10_000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Sines and cosines of t (B,) at `dim / 2` geometric frequencies -> (B, dim) in `dtype`.

    The transformer position code of Vaswani et al. (2017), applied to diffusion timesteps as in
    DDPM (Ho et al., 2020); frequencies run from 1 to 1 / max_period, computed in float32 exactly
    as the reference computes them (the angles at t ~ 1000 then agree to the last bit).
    """
    half = dim // 2
    step = math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=t.device) * -step)  # float32
    angles = t.to(dtype)[:, None] * freqs.to(dtype)  # (B, dim / 2)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """Diffusion step t (B,) -> hidden vector (B, hidden_dim): sinusoids, a linear layer, Mish."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Mish())

    def forward(self, t: Tensor) -> Tensor:
        # float64 weights get float64 angles; anything else float32 (autocast casts for the matmul)
        dtype = torch.float64 if self.proj[0].weight.dtype == torch.float64 else torch.float32
        return self.proj(sinusoidal_embedding(t, self.dim, dtype=dtype))


class FeedForward(nn.Module):
    """Position-wise feed-forward block: linear, GELU, dropout, linear."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary self-attention."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, rotation: AnyRotation | None = None, is_causal: bool = False) -> Tensor:
        """x (B, S, D) -> (B, S, D)."""
        x = x + self.dropout(self.attn(self.norm_attn(x), rotation=rotation, is_causal=is_causal))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class FiLMDecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer whose every sub-layer output is FiLM-modulated.

    Self-attention, then one cross-attention per memory, then the feed-forward block; each
    result is modulated by the conditioning vector and added to the residual stream (the
    FiLMTransformerDecoderLayer of EDGE, Tseng et al. 2023, reused by Audio2Photoreal in its
    denoisers and its guide transformer). Memories arrive as precomputed keys and values
    (`cross_attention[i].key_value(...)`), so a fixed condition is projected once, not at every
    call; an autoregressive decoder passes a `KVCache` for its own keys and values.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        cross_attentions: int = 1,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        cond_dim = cond_dim or dim
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, dropout)
        self.film_self = FiLM(cond_dim, dim)
        self.norm_cross = nn.ModuleList(nn.LayerNorm(dim) for _ in range(cross_attentions))
        self.cross_attention = nn.ModuleList(Attention(dim, heads, dropout) for _ in range(cross_attentions))
        self.film_cross = nn.ModuleList(FiLM(cond_dim, dim) for _ in range(cross_attentions))
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.film_ff = FiLM(cond_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memories: Sequence[KeyValue],
        cond: Tensor,
        rotation: AnyRotation | None = None,
        is_causal: bool = False,
        *,
        cross_rotation: AnyRotation | None = None,
        cache: KVCache | None = None,
        cache_layer: int = 0,
    ) -> Tensor:
        """x (B, T, D), memories [(k, v)] one per cross-attention, cond (B, C) -> (B, T, D).

        Queries and keys of the self-attention are rotated by `rotation`, queries of the
        cross-attentions by `cross_rotation` (None: by `rotation`); keys of a memory carry
        whatever rotation they were computed with. With a `cache`, x holds the positions after
        the cached ones: their keys and values are appended to the cache's `cache_layer` entry
        and the queries attend to all of them.
        """
        if len(memories) != len(self.cross_attention):
            raise ValueError(
                f"layer has {len(self.cross_attention)} cross-attentions, got {len(memories)} memories"
            )
        h = self.norm_self(x)
        q = self.self_attention.query(h, rotation)  # (B, H, T, D_head)
        k, v = self.self_attention.key_value(h, rotation)
        if cache is not None:
            k, v = cache.append(cache_layer, k, v)
        if 1 < q.shape[2] != k.shape[2]:
            raise ValueError("with cached positions, decode one token at a time")
        # One query over all keys before it: nothing to mask.
        h = self.self_attention.attend(q, k, v, is_causal=is_causal and q.shape[2] > 1)
        x = x + self.film_self(self.dropout(h), cond)
        cross_rotation = rotation if cross_rotation is None else cross_rotation
        for norm, attention, film, (k, v) in zip(
            self.norm_cross, self.cross_attention, self.film_cross, memories
        ):
            h = attention.attend(attention.query(norm(x), cross_rotation), k, v)
            x = x + film(self.dropout(h), cond)
        return x + self.film_ff(self.dropout(self.ff(self.norm_ff(x))), cond)


class CausalDilatedConvStack(nn.Module):
    """Causal dilated 1-D convolutions with leaky ReLU, dropout and averaged skip connections.

    Output frame t depends on input frames t - receptive_field + 1 ... t only: the input is padded
    on the left by receptive_field - 1 and every conv is unpadded. A layer whose input and output
    widths agree averages its output with its (cropped) input, as the reference's TCN heads do.
    """

    def __init__(
        self,
        channels: Sequence[int],
        dilations: Sequence[int],
        kernel_size: int = 3,
        dropout: float = 0.0,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if len(channels) != len(dilations) + 1:
            raise ValueError(
                f"{len(dilations)} convs need {len(dilations) + 1} channel counts, got {len(channels)}"
            )
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, kernel_size, dilation=d)
            for c_in, c_out, d in zip(channels[:-1], channels[1:], dilations)
        )
        self.receptive_field = 1 + sum((kernel_size - 1) * d for d in dilations)
        self.dropout = dropout
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, T) -> (B, C_out, T)."""
        x = F.pad(x, (self.receptive_field - 1, 0))
        for conv in self.convs:
            y = F.leaky_relu(conv(x), self.negative_slope)
            y = F.dropout(y, self.dropout, training=self.training)
            x = (x[..., -y.shape[-1] :] + y) / 2 if y.shape[1] == x.shape[1] else y
        return x


def init_xavier_(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every linear and conv layer inside `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
