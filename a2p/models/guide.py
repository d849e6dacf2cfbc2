"""The guide transformer: audio -> VQ tokens of the 1 fps keyframe poses (after the reference's model/guide.py).

Tokens of a clip are its VQ codes (B, T_k, L) flattened time-major: keyframe 0 level 0, keyframe 0
level 1, ..., so token i is level i % L of keyframe i // L. A decoder-only FiLM transformer predicts
token i from the tokens before it (causal self-attention with rotary positions) and from the audio
(cross-attention to features that pass a residual dilated conv stack; FiLM from pooled audio).

`generate` samples tokens with nucleus (top-p) sampling and a key/value cache: the audio is encoded
once per call, and each new token costs one position's compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.config.guide import GuideConfig
from a2p.models.layers import Attention, FeedForward, FiLM, RotaryEmbedding, Rotation

Generators = torch.Generator | list[torch.Generator] | None


class _AudioEncoder(nn.Module):
    """Features (B, F, C) -> tokens (B, F, W): projection, residual dilated convs, pooled vector."""

    def __init__(self, audio_dim: int, width: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.project = nn.Linear(audio_dim, width)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, 3, padding=d, dilation=d) for d in dilations)
        self.norm = nn.LayerNorm(width)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.project(features).transpose(1, 2)  # (B, W, F)
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        tokens = self.norm(h.transpose(1, 2))  # (B, F, W)
        return tokens, tokens.mean(dim=1)


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.films = nn.ModuleList(FiLM(width, width) for _ in range(3))
        self.self_attention = Attention(width, heads, dropout)
        self.cross_attention = Attention(width, heads, dropout)
        self.feed_forward = FeedForward(width, ff_dim, dropout)


@dataclass
class _Cache:
    """Keys and values of the tokens seen so far, per layer, each (B, H, n, D_head)."""

    keys: list[Tensor]
    values: list[Tensor]
    audio_kv: list[tuple[Tensor, Tensor]]
    pooled: Tensor
    length: int = 0


class GuideTransformer(nn.Module):
    """Autoregressive model of VQ tokens given audio features."""

    def __init__(self, config: GuideConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.bos = config.codes  # the extra token that starts every sequence
        self.token_embedding = nn.Embedding(config.codes + 1, w)
        self.level_embedding = nn.Embedding(config.levels, w)
        self.audio = _AudioEncoder(config.audio_dim, w, config.audio_dilations)
        self.rotary = RotaryEmbedding(w // config.heads)
        self.layers = nn.ModuleList(
            _Layer(w, config.heads, config.ff_dim, config.dropout) for _ in range(config.layers)
        )
        self.out_norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, config.codes)

    # --- shared pieces -------------------------------------------------------------------------

    def _embed(self, inputs: Tensor, start: int) -> Tensor:
        """Embeddings (B, n, W) of input tokens (B, n) at sequence positions start .. start + n - 1."""
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        return self.token_embedding(inputs) + self.level_embedding(positions % self.config.levels)

    def _rotation(self, start: int, length: int, device: torch.device) -> Rotation:
        return self.rotary(torch.arange(start, start + length, device=device, dtype=torch.float32))

    def _run_layers(
        self,
        h: Tensor,
        pooled: Tensor,
        audio_kv: list[tuple[Tensor, Tensor]],
        rotation: Rotation,
        cache: _Cache | None,
    ) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer.films[0](layer.norms[0](h), pooled)
            q = layer.self_attention.query(x, rotation)
            k, v = layer.self_attention.key_value(x, rotation)
            if cache is not None and cache.length:
                k = torch.cat((cache.keys[index], k), dim=2)
                v = torch.cat((cache.values[index], v), dim=2)
            if cache is not None:
                if len(cache.keys) > index:
                    cache.keys[index], cache.values[index] = k, v
                else:
                    cache.keys.append(k)
                    cache.values.append(v)
            # Without a cache (or when prefilling) queries and keys start together: causal mask.
            # One cached query attends to every key before it: no mask.
            causal = q.shape[2] == k.shape[2] and q.shape[2] > 1
            if q.shape[2] != k.shape[2] and q.shape[2] > 1:
                raise ValueError("a cached step takes one token at a time")
            h = h + layer.self_attention.attend(q, k, v, is_causal=causal)
            x = layer.films[1](layer.norms[1](h), pooled)
            h = h + layer.cross_attention.attend(layer.cross_attention.query(x), *audio_kv[index])
            h = h + layer.feed_forward(layer.films[2](layer.norms[2](h), pooled))
        return self.head(self.out_norm(h))  # (B, n, codes)

    def encode_audio(self, features: Tensor) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """Per-layer cross-attention keys/values of the audio, and the pooled FiLM vector."""
        tokens, pooled = self.audio(features)
        return [layer.cross_attention.key_value(tokens) for layer in self.layers], pooled

    # --- training ------------------------------------------------------------------------------

    def logits(self, codes: Tensor, features: Tensor) -> Tensor:
        """Next-token logits (B, T_k * L, codes) for codes (B, T_k, L) under teacher forcing."""
        batch = codes.shape[0]
        flat = codes.reshape(batch, -1)  # (B, N)
        bos = torch.full((batch, 1), self.bos, dtype=flat.dtype, device=flat.device)
        inputs = torch.cat((bos, flat[:, :-1]), dim=1)
        audio_kv, pooled = self.encode_audio(features)
        rotation = self._rotation(0, inputs.shape[1], inputs.device)
        return self._run_layers(self._embed(inputs, 0), pooled, audio_kv, rotation, cache=None)

    def forward(self, codes: Tensor, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy of codes (B, T_k, L) given features; mask (B, T_k) marks valid keyframes."""
        logits = self.logits(codes, features)
        target = codes.reshape(codes.shape[0], -1)
        per_token = F.cross_entropy(logits.transpose(1, 2).float(), target, reduction="none")  # (B, N)
        weight = (
            torch.ones_like(per_token)
            if mask is None
            else mask.repeat_interleave(self.config.levels, 1).float()
        )
        loss = (per_token * weight).sum() / weight.sum().clamp(min=1.0)
        accuracy = ((logits.argmax(-1) == target).float() * weight).sum() / weight.sum().clamp(min=1.0)
        return {"loss": loss, "accuracy": accuracy.detach()}

    # --- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        features: Tensor,
        num_steps: int,
        *,
        top_p: float = 0.94,
        temperature: float = 1.0,
        generator: Generators = None,
        prefix: Tensor | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample codes (B, num_steps, L) after `prefix` (B, P, L) given features (B, F, C).

        One generator, or one per row (repetitions whose draws must not depend on their batch).
        `use_cache=False` recomputes the whole prefix for every token, as the reference does.
        """
        batch, levels = features.shape[0], self.config.levels
        device = features.device
        tokens = torch.full((batch, 1), self.bos, dtype=torch.long, device=device)
        if prefix is not None:
            tokens = torch.cat((tokens, prefix.reshape(batch, -1).to(device)), dim=1)
        audio_kv, pooled = self.encode_audio(features)
        cache = _Cache([], [], audio_kv, pooled) if use_cache else None
        new, step_logits = [], []
        for _ in range(num_steps * levels):
            if cache is not None:
                fresh = tokens[:, cache.length :]
                rotation = self._rotation(cache.length, fresh.shape[1], device)
                logits = self._run_layers(self._embed(fresh, cache.length), pooled, audio_kv, rotation, cache)
                cache.length = tokens.shape[1]
            else:
                rotation = self._rotation(0, tokens.shape[1], device)
                logits = self._run_layers(self._embed(tokens, 0), pooled, audio_kv, rotation, None)
            last = logits[:, -1].float()  # (B, codes)
            step_logits.append(last)
            token = sample_top_p(last, top_p, temperature, generator)
            new.append(token)
            tokens = torch.cat((tokens, token[:, None]), dim=1)
        codes = torch.stack(new, dim=1).view(batch, num_steps, levels)
        if return_logits:
            return codes, torch.stack(step_logits, dim=1)
        return codes


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Logits (B, K) with every token outside the nucleus set to -inf (Holtzman et al., 2020).

    The nucleus is the smallest set of most likely tokens whose probabilities sum to at least p.
    """
    if top_p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_top_p(logits: Tensor, top_p: float, temperature: float, generator: Generators) -> Tensor:
    """One token per row (B,) from logits (B, K) by nucleus sampling at `temperature`."""
    probs = top_p_filter(logits / max(temperature, 1e-6), top_p).softmax(dim=-1)
    if isinstance(generator, list):
        return torch.cat(
            [torch.multinomial(row[None], 1, generator=g)[:, 0] for row, g in zip(probs, generator)]
        )
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def build_guide(config: GuideConfig) -> GuideTransformer:
    """The guide transformer described by `config`, on the current default device, in float32."""
    return GuideTransformer(config)
