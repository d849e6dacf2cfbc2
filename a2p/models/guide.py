"""The guide transformer: audio -> VQ tokens of the 1 fps keyframe poses (after the reference's model/guide.py).

Tokens. A clip's VQ codes (B, T_k, L) are flattened time-major: keyframe 0 level 0, keyframe 0
level 1, ..., so token i is level i % L of keyframe i // L. Input position i holds the token
before it (a start token at position 0) and predicts token i. An input is embedded as token +
level embedding (the level of the token it predicts); positions enter through rotary embeddings.

Network. A decoder-only FiLM transformer of the denoisers' `FiLMDecoderLayer` (the reference's
FiLMTransformerDecoderLayer) with one cross-attention: per layer causal rotary self-attention,
cross-attention to the audio, and a feed-forward block, each pre-normed, FiLM-modulated by the
pooled audio and added to the residual stream. The 100 Hz audio features pass a stack of dilated
convs, a projection to the model width and a layer norm before cross-attention; their mean,
through a small MLP, is the FiLM vector.

Time alignment. Self-attention rotates by token index. Cross-attention rotates by time on the
axis the denoiser uses (motion frames): the query of token i sits at keyframe i // L, frame
(i // L) * KEYFRAME_INTERVAL, and audio feature n at the centre of its sample block, so scores
depend on how far a keyframe is from each piece of audio.

The reference's own guide (`positions: reference`, `audio_padding: valid`, no level embedding,
no output norm, 1998 positional null tokens; the released checkpoint's architecture): inputs are
rotated before the projections at integer indices (tokens 0..N, audio features 0..F'), and its
unpadded convs leave F - 48 audio tokens, each centred 24 features after its first input.

Sampling. `generate` encodes the audio once per call, then samples token by token with nucleus
(top-p) sampling and a key/value cache (each new token costs one position's compute). The uniform
numbers the sampler inverts are drawn up front from the caller's generator (one per row, or one
for the batch), so a row's tokens do not depend on what else is in the batch or on the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2p.config.guide import GuideConfig
from a2p.constants import KEYFRAME_INTERVAL
from a2p.models.layers import (
    AnyRotation,
    FiLMDecoderLayer,
    InputRotary,
    KeyValue,
    KVCache,
    RotaryEmbedding,
    audio_positions,
)

Generators = torch.Generator | list[torch.Generator] | None
"""One generator for the batch, one per row, or None for the default generator."""

NEGATIVE_SLOPE = 0.2
"""Slope of the leaky ReLUs of the audio conv stack (the reference's)."""


class AudioConvStack(nn.Module):
    """Features (B, F, C) -> (B, F, W): dilated convs with leaky ReLU and dropout, then a 1x1 conv.

    With `pad`, convs are zero-padded to keep the length, so output n stays centred on feature n;
    without (the reference's), the output is sum(d * (kernel_size - 1)) features shorter.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        dilations: tuple[int, ...],
        kernel_size: int,
        dropout: float,
        pad: bool = True,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(
                in_dim if i == 0 else width,
                width,
                kernel_size,
                dilation=d,
                padding=d * (kernel_size - 1) // 2 if pad else 0,
            )
            for i, d in enumerate(dilations)
        )
        self.out = nn.Conv1d(width if dilations else in_dim, width, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor) -> Tensor:
        h = features.transpose(1, 2)  # (B, C, F)
        for conv in self.convs:
            h = self.dropout(F.leaky_relu(conv(h), NEGATIVE_SLOPE))
        return self.out(h).transpose(1, 2)  # (B, F, W)


@dataclass
class AudioMemory:
    """A clip's audio as the decoder reads it, computed once per `generate` call."""

    kv: list[KeyValue]
    """Per layer: cross-attention keys (rotated to audio times) and values, each (B, H, F, W / H)."""
    pooled: Tensor
    """(B, W) FiLM conditioning vector."""


class GuideTransformer(nn.Module):
    """Autoregressive model of the VQ tokens of keyframes given 100 Hz audio features."""

    def __init__(self, config: GuideConfig) -> None:
        super().__init__()
        self.config = c = config
        self.start_token = c.codes
        self.token_embedding = nn.Embedding(c.codes + 1, c.width)
        self.level_embedding = nn.Embedding(c.levels, c.width) if c.level_embedding else None
        self.reference_positions = c.positions == "reference"
        if self.reference_positions:
            self.rotary: nn.Module = InputRotary(c.width, c.rotary_theta)
        else:
            self.rotary = RotaryEmbedding(c.width // c.heads, c.rotary_theta)
        self.audio_convs = AudioConvStack(
            c.audio_dim,
            c.audio_width,
            c.audio_dilations,
            c.audio_kernel_size,
            c.audio_dropout,
            pad=c.audio_padding == "same",
        )
        self.audio_in = nn.Linear(c.audio_width, c.width)
        self.audio_norm = nn.LayerNorm(c.width)
        self.pool_mlp = nn.Sequential(
            nn.LayerNorm(c.width), nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width)
        )
        # a2p: one null token (W,) for every position; the reference: one per position (1, N, W)
        null_shape = (c.width,) if c.null_audio_tokens == 1 else (1, c.null_audio_tokens, c.width)
        self.null_audio = nn.Parameter(0.02 * torch.randn(null_shape))
        self.null_pooled = nn.Parameter(0.02 * torch.randn(c.width))
        self.layers = nn.ModuleList(
            FiLMDecoderLayer(c.width, c.heads, c.ff_dim, c.dropout, cross_attentions=1)
            for _ in range(c.layers)
        )
        self.out_norm = nn.LayerNorm(c.width) if c.out_norm else nn.Identity()
        self.head = nn.Linear(c.width, c.codes)

    # --- conditioning --------------------------------------------------------------------------

    def encode_audio(self, features: Tensor, keep_mask: Tensor | None = None) -> AudioMemory:
        """The memory of features (B, F, C); rows whose keep_mask (B,) is False get the null condition."""
        if features.shape[0] > 1 and features.stride(0) == 0 and keep_mask is None:
            # One clip expanded over repetitions: encode it once, share the result.
            one = self.encode_audio(features[:1])
            size = features.shape[0]
            return AudioMemory(
                [(k.expand(size, -1, -1, -1), v.expand(size, -1, -1, -1)) for k, v in one.kv],
                one.pooled.expand(size, -1),
            )
        tokens = self.audio_in(self.audio_convs(features))  # (B, F, W)
        pooled = self.pool_mlp(tokens.mean(dim=1))  # (B, W)
        if keep_mask is not None:
            keep = keep_mask.to(tokens.device)
            tokens = torch.where(
                keep[:, None, None], tokens, self._null_audio(tokens.shape[1]).to(tokens.dtype)
            )
            pooled = torch.where(keep[:, None], pooled, self.null_pooled.to(pooled.dtype))
        memory = self.audio_norm(tokens)
        length, device = memory.shape[1], memory.device
        if self.reference_positions:
            rotation = self.rotary(torch.arange(length, device=device, dtype=torch.float32))
        else:
            rotation = self.rotary(audio_positions(length, device))
        kv = [layer.cross_attention[0].key_value(memory, rotation) for layer in self.layers]
        return AudioMemory(kv, pooled)

    def _null_audio(self, length: int) -> Tensor:
        """The null audio tokens of `length` positions (the shared one broadcasts)."""
        if self.null_audio.ndim == 1:
            return self.null_audio
        if length > self.null_audio.shape[1]:
            raise ValueError(
                f"{length} audio tokens exceed the guide's {self.null_audio.shape[1]} positional null tokens"
            )
        return self.null_audio[:, :length]

    # --- decoding ------------------------------------------------------------------------------

    def _rotations(self, positions: Tensor) -> tuple[AnyRotation, AnyRotation]:
        """(self-attention, cross-attention query) rotations of the inputs at `positions`."""
        if self.reference_positions:  # both at the token index
            rotation = self.rotary(positions.float())
            return rotation, rotation
        levels = self.config.levels
        return self.rotary(positions.float()), self.rotary((positions // levels).float() * KEYFRAME_INTERVAL)

    def decode(self, inputs: Tensor, start: int, memory: AudioMemory, cache: KVCache | None = None) -> Tensor:
        """Logits (B, n, codes) after input tokens (B, n) at positions start .. start + n - 1."""
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        h = self.token_embedding(inputs)  # (B, n, W)
        if self.level_embedding is not None:
            h = h + self.level_embedding(positions % self.config.levels)
        self_rotation, cross_rotation = self._rotations(positions)
        for index, (layer, audio_kv) in enumerate(zip(self.layers, memory.kv)):
            h = layer(
                h,
                [audio_kv],
                memory.pooled,
                self_rotation,
                is_causal=True,
                cross_rotation=cross_rotation,
                cache=cache,
                cache_layer=index,
            )
        if cache is not None:
            cache.length += inputs.shape[1]
        return self.head(self.out_norm(h))

    def _inputs(self, tokens: Tensor) -> Tensor:
        """The start token followed by tokens (B, N) -> (B, N + 1)."""
        start = torch.full((tokens.shape[0], 1), self.start_token, dtype=torch.long, device=tokens.device)
        return torch.cat((start, tokens.long()), dim=1)

    # --- training ------------------------------------------------------------------------------

    def logits(self, codes: Tensor, features: Tensor, keep_mask: Tensor | None = None) -> Tensor:
        """Next-token logits (B, T_k * L, codes) for codes (B, T_k, L) under teacher forcing."""
        flat = codes.reshape(codes.shape[0], -1)  # (B, N)
        memory = self.encode_audio(features, keep_mask)
        return self.decode(self._inputs(flat[:, :-1]), 0, memory)

    def forward(
        self, codes: Tensor, features: Tensor, mask: Tensor | None = None, keep_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Cross-entropy of codes (B, T_k, L) given features (B, F, C); mask (B, T_k) marks valid keyframes.

        While training, each row's audio is dropped with probability `cond_drop_prob` unless
        keep_mask (B,) says which rows keep theirs.
        """
        batch = codes.shape[0]
        if keep_mask is None and self.training and self.config.cond_drop_prob > 0:
            keep_mask = torch.rand(batch, device=codes.device) >= self.config.cond_drop_prob
        logits = self.logits(codes, features, keep_mask).float()  # (B, N, codes)
        target = codes.reshape(batch, -1)  # (B, N)
        per_token = F.cross_entropy(
            logits.transpose(1, 2), target, reduction="none", label_smoothing=self.config.label_smoothing
        )
        weight = (
            torch.ones_like(per_token)
            if mask is None
            else mask.to(per_token.device).repeat_interleave(self.config.levels, dim=1).float()
        )
        denom = weight.sum().clamp(min=1.0)
        loss = (per_token * weight).sum() / denom
        accuracy = ((logits.argmax(-1) == target).float() * weight).sum() / denom
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
        """Sample codes (B, num_steps, L) of the keyframes after `prefix` (B, P, L), given features (B, F, C).

        The features cover the prefix's keyframes and the new ones (keyframe k of the window at
        frame k * KEYFRAME_INTERVAL). `generator` is one generator or one per row (repetitions
        whose draws must not depend on the batch); `temperature` 0 takes the most likely token.
        `use_cache=False` recomputes every position for every token, as the reference does; with
        `return_logits` the float32 logits (B, num_steps * L, codes) of every sampled token come too.
        """
        batch, levels, device = features.shape[0], self.config.levels, features.device
        count = num_steps * levels
        known = (
            prefix.reshape(batch, -1).to(device).long()
            if prefix is not None
            else features.new_zeros((batch, 0), dtype=torch.long)
        )
        uniforms = draw_uniforms(generator, batch, count, device)  # (B, count)
        memory = self.encode_audio(features)
        cache = KVCache(len(self.layers), known.shape[1] + count) if use_cache else None
        inputs = self._inputs(known)  # (B, P * L + 1)
        new, step_logits = [], []
        for step in range(count):
            if cache is None:
                logits = self.decode(inputs, 0, memory)[:, -1]
            else:  # first the start token and prefix together, then one token at a time
                fresh = inputs[:, cache.length :]
                logits = self.decode(fresh, cache.length, memory, cache)[:, -1]
            logits = logits.float()  # (B, codes)
            token = sample_top_p(logits, top_p, temperature, uniforms[:, step])
            new.append(token)
            if return_logits:
                step_logits.append(logits)
            inputs = torch.cat((inputs, token[:, None]), dim=1)
        codes = torch.stack(new, dim=1) if new else known.new_zeros((batch, 0))
        codes = codes.view(batch, num_steps, levels)
        if return_logits:
            empty = features.new_zeros((batch, 0, self.config.codes), dtype=torch.float32)
            return codes, torch.stack(step_logits, dim=1) if step_logits else empty
        return codes


def draw_uniforms(generator: Generators, batch: int, count: int, device: torch.device) -> Tensor:
    """Uniform numbers (B, count) in [0, 1): row b from generator[b] when given one per row."""
    if isinstance(generator, list):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for a batch of {batch}")
        return torch.stack([torch.rand(count, generator=g, device=device) for g in generator])
    return torch.rand((batch, count), generator=generator, device=device)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Logits (B, K) with every token outside the nucleus set to -inf (Holtzman et al., 2020).

    The nucleus is the smallest set of most likely tokens whose probabilities sum to at least p.
    """
    if top_p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    outside = before >= top_p
    outside[:, 0] = False  # the most likely token always stays
    drop = torch.zeros_like(outside).scatter(-1, order, outside)
    return logits.masked_fill(drop, float("-inf"))


def sample_top_p(logits: Tensor, top_p: float, temperature: float, uniform: Tensor) -> Tensor:
    """One token (B,) per row of logits (B, K) by nucleus sampling, inverting the CDF at uniform (B,).

    The nucleus is kept in descending probability order; a token is the first whose cumulative
    (renormalised) probability exceeds the row's uniform number. No host synchronisation.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, K)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    outside = before >= top_p
    outside[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    cdf = sorted_probs.cumsum(dim=-1)  # (B, K)
    target = (uniform.to(cdf.dtype) * cdf[:, -1])[:, None]  # (B, 1)
    rank = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    return order.gather(-1, rank)[:, 0]


def build_guide(config: GuideConfig) -> GuideTransformer:
    """The guide transformer described by `config`, on the current default device, in float32."""
    return GuideTransformer(config)
