"""Clips longer than a model window: overlapping windows denoised together, one state for all.

The denoisers were trained on crops of at most `CROP_MAX_FRAMES` frames, so a long clip is cut
into windows of that length that overlap by at least `overlap` frames (as few windows as that
allows, spread evenly from the clip's start to its end, starts on the 1 fps keyframe grid). The sampler keeps ONE full-length state x_t. At every
step each window predicts x0 from its slice of x_t and its own audio (and keyframes), and the
full-length x0 is the weighted average of the windows' predictions: weight 1 inside a window,
falling linearly to 0 across each overlap. Both windows of an overlap therefore always start
from the same x_t and end with the same x0: the overlaps are consistent at every step by
construction, and the crossfade makes the seam smooth. This is the symmetric counterpart of
EDGE's long-form scheme (Tseng et al., 2023, Sec. 3.3), which instead overwrites one half with
the other.

Windows can be split over ranks: each rank predicts a contiguous block of windows. The samplers'
updates act frame by frame, so a rank only needs x0 right on the frames of its own windows:
every step, neighbouring ranks add up their weighted sums on the frames their blocks share (one
small all-reduce of just those overlap frames), and at the end each frame is taken from the rank
that owns it (one all-reduce of the clip). The result is the same for any number of ranks up to
float rounding: the order in which a frame's two (rarely three) window terms are added, and how
a batch of windows is split between matrix multiplications, may differ.

The guide's keyframes continue across windows: each window after the first generates its new
keyframes after the ones its overlap already holds, as a prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from a2p.constants import CROP_MAX_FRAMES, FEATURE_RATE_HZ, FPS, KEYFRAME_INTERVAL
from a2p.errors import ConfigError
from a2p.models.denoiser import Condition, Denoiser

DEFAULT_OVERLAP = 4 * KEYFRAME_INTERVAL
"""Frames shared by neighbouring windows (4 s)."""

AllReduce = Callable[[Tensor], None]
"""Sums a tensor in place over the ranks that share a clip's windows."""


def feature_frames(frames: int) -> int:
    """Audio feature frames (100 Hz) covering `frames` motion frames (30 fps); frames % 3 == 0."""
    return frames * FEATURE_RATE_HZ // FPS


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of a clip of `frames` frames lie; `frames` is a multiple of the keyframe interval."""

    frames: int
    window: int
    starts: tuple[int, ...]

    @classmethod
    def build(cls, frames: int, window: int = CROP_MAX_FRAMES, overlap: int = DEFAULT_OVERLAP) -> WindowPlan:
        if window % KEYFRAME_INTERVAL or overlap % KEYFRAME_INTERVAL:
            raise ConfigError(
                f"window ({window}) and overlap ({overlap}) must be multiples of {KEYFRAME_INTERVAL}"
            )
        if not 0 < overlap <= window // 2:
            raise ConfigError(f"overlap ({overlap}) must lie in (0, window / 2 = {window // 2}]")
        if frames % KEYFRAME_INTERVAL:
            raise ValueError(f"a windowed clip's length ({frames}) must be a multiple of {KEYFRAME_INTERVAL}")
        if frames <= window:
            return cls(frames, frames, (0,))
        # as few windows as the overlap allows, spread evenly over the clip on the keyframe grid
        gaps = math.ceil((frames - window) / (window - overlap))
        spacing = (frames - window) / gaps
        starts = [round(i * spacing / KEYFRAME_INTERVAL) * KEYFRAME_INTERVAL for i in range(gaps + 1)]
        return cls(frames, window, tuple(starts))

    @property
    def count(self) -> int:
        return len(self.starts)

    def weights(self, device: torch.device | None = None) -> Tensor:
        """(count, window) crossfade weights: 1 inside, linear ramps across each actual overlap."""
        w = torch.ones(self.count, self.window, device=device)
        position = torch.arange(self.window, device=device, dtype=torch.float32) + 0.5
        for i in range(1, self.count):
            shared = self.starts[i - 1] + self.window - self.starts[i]
            ramp = (position[:shared] / shared).clamp(max=1.0)
            w[i, :shared] = torch.minimum(w[i, :shared], ramp)
            w[i - 1, self.window - shared :] = torch.minimum(w[i - 1, self.window - shared :], ramp.flip(0))
        return w

    def frame_owners(self, world_size: int) -> Tensor:
        """(frames,) long: the lowest rank whose block of windows covers each frame."""
        owner = torch.full((self.frames,), world_size, dtype=torch.long)
        for rank in reversed(range(world_size)):
            for i in self.block(rank, world_size):
                owner[self.starts[i] : self.starts[i] + self.window] = rank
        return owner

    def shared_frames(self, world_size: int) -> Tensor:
        """Indices of the frames covered by windows of two ranks (the overlaps at block boundaries)."""
        covering = torch.zeros(self.frames, dtype=torch.long)
        for rank in range(world_size):
            seen = torch.zeros(self.frames, dtype=torch.bool)
            for i in self.block(rank, world_size):
                seen[self.starts[i] : self.starts[i] + self.window] = True
            covering += seen
        return torch.nonzero(covering > 1).flatten()

    def block(self, rank: int, world_size: int) -> range:
        """The contiguous windows rank `rank` of `world_size` predicts (possibly none)."""
        per = math.ceil(self.count / world_size)
        return range(min(rank * per, self.count), min((rank + 1) * per, self.count))

    def slice_features(self, features: Tensor) -> Tensor:
        """(count * B, F_window, C) window features from whole-clip features (B, F, C), window-major rows."""
        size = feature_frames(self.window)
        parts = [features[:, feature_frames(s) : feature_frames(s) + size] for s in self.starts]
        return torch.stack(parts, dim=1).flatten(0, 1)  # (B, count, F_w, C) -> rows b * count + i

    def slice_keyframes(self, keyframes: Tensor) -> Tensor:
        """(B * count, K_window, D) window keyframes from whole-clip keyframes (B, K, D)."""
        size = self.window // KEYFRAME_INTERVAL
        parts = [keyframes[:, s // KEYFRAME_INTERVAL : s // KEYFRAME_INTERVAL + size] for s in self.starts]
        return torch.stack(parts, dim=1).flatten(0, 1)


class WindowedDenoiser:
    """`denoise(x_t, t, keep_mask) -> x0` over a whole long clip, for `guided_model`.

    condition: the encoded condition of every (repetition, window) row, rows r * count + i; or,
    when it has only `count` rows, one set that every repetition shares (the face model).
    A step's condition rows are selected (and null rows swapped in) anew for each batch of
    windows rather than kept for every window: the selection is cheap next to the forward pass,
    and keeping them all would multiply the condition's memory by 2 x reps on long clips.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        condition: Condition,
        plan: WindowPlan,
        reps: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        all_reduce: AllReduce | None = None,
        window_batch: int = 8,
    ) -> None:
        self.denoiser, self.plan, self.reps = denoiser, plan, reps
        self.condition = condition
        self.shared = condition.batch_size == plan.count and reps > 1
        self.mine = plan.block(rank, world_size)
        self.all_reduce = all_reduce
        if world_size > 1 and all_reduce is None:
            raise ValueError("windows split over ranks need an all_reduce")
        device = condition.pooled.device
        owner = plan.frame_owners(world_size).to(device)  # (T,) the first rank whose windows cover a frame
        self.owned = owner == rank
        self.shared_frames = plan.shared_frames(world_size).to(device)  # frames two ranks' windows cover
        self.window_batch = window_batch
        audio_length = condition.audio_kv[0][0].shape[2]
        guide_length = condition.guide_kv[0][0].shape[2] if condition.guide_kv is not None else None
        self.null = denoiser.null_condition(1, audio_length, guide_length)
        self.weights = plan.weights(condition.pooled.device)  # (count, window)
        self.total = torch.zeros(plan.frames, device=condition.pooled.device)
        for i, start in enumerate(plan.starts):
            self.total[start : start + plan.window] += self.weights[i]

    def _rows(self, keep: Tensor, windows: list[int]) -> Condition:
        """Condition rows for x_t rows (b, window): b's repetition is b % reps; keep False -> null."""
        count = self.plan.count
        index = []
        for b in range(keep.shape[0]):
            rep = 0 if self.shared else b % self.reps
            index += [rep * count + i for i in windows]
        index_t = torch.tensor(index, device=self.condition.pooled.device)
        rows = self.condition.map(lambda x: x.index_select(0, index_t))
        if bool(keep.all()):
            return rows
        null = self.null.map(lambda x: x.expand(len(index), *x.shape[1:]).to(rows.pooled.dtype))
        drop = (~keep).repeat_interleave(len(windows)).to(rows.pooled.device)

        def choose(c: Tensor, n: Tensor) -> Tensor:
            return torch.where(drop.view(-1, *([1] * (c.ndim - 1))), n, c)

        pooled = choose(rows.pooled, null.pooled)
        audio_kv = tuple(
            (choose(k, nk), choose(v, nv)) for (k, v), (nk, nv) in zip(rows.audio_kv, null.audio_kv)
        )
        guide_kv = None
        if rows.guide_kv is not None:
            guide_kv = tuple(
                (choose(k, nk), choose(v, nv)) for (k, v), (nk, nv) in zip(rows.guide_kv, null.guide_kv)
            )
        return Condition(pooled, audio_kv, guide_kv)

    def __call__(self, x_t: Tensor, t: Tensor, keep_mask: Tensor) -> Tensor:
        plan, size = self.plan, self.plan.window
        total = torch.zeros(x_t.shape, device=x_t.device, dtype=torch.float32)  # (B, T, D) weighted sum
        mine = list(self.mine)
        for first in range(0, len(mine), self.window_batch):
            windows = mine[first : first + self.window_batch]
            x = torch.stack([x_t[:, plan.starts[i] : plan.starts[i] + size] for i in windows], dim=1)
            x0 = self.denoiser(
                x.flatten(0, 1), t.repeat_interleave(len(windows)), self._rows(keep_mask, windows)
            ).unflatten(0, (x_t.shape[0], len(windows)))  # (B, n, window, D)
            for k, i in enumerate(windows):
                start = plan.starts[i]
                total[:, start : start + size] += self.weights[i][:, None] * x0[:, k].float()
        if self.all_reduce is not None:  # exchange only the frames where neighbouring blocks overlap
            boundary = total[:, self.shared_frames].contiguous()
            self.all_reduce(boundary)
            total[:, self.shared_frames] = boundary
        # frames outside this rank's windows hold garbage here; `gather` never reads them
        return (total / self.total[:, None]).to(x_t.dtype)

    def gather(self, x: Tensor) -> Tensor:
        """The whole clip on every rank: each frame from the rank that owns it (one all-reduce at the end)."""
        if self.all_reduce is None:
            return x
        out = torch.where(self.owned[None, :, None], x, torch.zeros_like(x)).contiguous()
        self.all_reduce(out)
        return out


@torch.no_grad()
def generate_keyframe_codes(
    guide: torch.nn.Module,
    features: Tensor,
    plan: WindowPlan,
    *,
    top_p: float,
    generator: list[torch.Generator],
    per_window: bool = False,
) -> Tensor:
    """Codes (B, K, L) of a long clip's keyframes, window by window, each continuing the last.

    features (1 or B, F, C) cover the whole clip, or, with `per_window`, (count, F_w, C) are each
    window's own; B = len(generator). Every window generates its keyframes after those its
    overlap with earlier windows already holds (passed as the prefix).
    """
    batch = len(generator)
    keyframes = plan.frames // KEYFRAME_INTERVAL
    window_keyframes = plan.window // KEYFRAME_INTERVAL
    codes: Tensor | None = None
    for index, start in enumerate(plan.starts):
        first = start // KEYFRAME_INTERVAL
        have = 0 if codes is None else codes.shape[1]
        end = min(first + window_keyframes, keyframes)
        if end <= have:
            continue
        prefix = codes[:, first:have] if codes is not None and have > first else None
        if per_window:
            window_features = features[index : index + 1]
        else:
            window_features = features[:, feature_frames(start) : feature_frames(start + plan.window)]
        window_features = window_features.expand(batch, *window_features.shape[1:])
        new = guide.generate(window_features, end - have, top_p=top_p, generator=generator, prefix=prefix)
        codes = new if codes is None else torch.cat((codes, new), dim=1)
    assert codes is not None
    return codes
