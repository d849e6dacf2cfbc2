"""The model pipeline for one clip: featurize once -> guide tokens -> VQ keyframes -> body; face.

Per clip: featurize the audio once (`prepare_clip`) -> guide transformer (KV cache, top-p) for
the 1 fps keyframe tokens of every repetition -> VQ decode to keyframe poses -> body diffusion on
audio + keyframes; face diffusion on audio. Repetitions and the CFG rows run as one batch. Every
repetition's guide tokens and noise come from generators seeded by (clip seed, repetition), so a
repetition's result does not depend on which others share its batch. A clip longer than a window
is padded to whole keyframes and sampled as overlapping windows (`a2p.sampling.windows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from a2p.constants import CROP_MAX_FRAMES, KEYFRAME_INTERVAL, SAMPLES_PER_FRAME
from a2p.errors import A2PError
from a2p.models.audio import featurize_long
from a2p.models.export import Exported, load_export
from a2p.sampling import repetition_generators, sample_motion
from a2p.sampling.windows import DEFAULT_OVERLAP, AllReduce, WindowPlan, generate_keyframe_codes

DEFAULT_GUIDANCE = {"face": 10.0, "body": 2.0}
"""Classifier-free guidance scales of the reference (DESIGN.md)."""
GUIDE_TOP_P = 0.94
"""Nucleus of the guide's token sampling (the reference's)."""
PARTS = ("body", "face")
"""What a clip's sampling makes: the body (with its keyframes) and the face, independently."""


@dataclass
class Models:
    """The four exported models a run needs, checked to fit together."""

    face: Exported
    body: Exported
    guide: Exported
    vq: Exported
    paths: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, face: str, body: str, guide: str, vq: str, device: torch.device) -> Models:
        loaded = {
            name: load_export(path, expect_task=name)
            for name, path in (("face", face), ("body", body), ("guide", guide), ("vq", vq))
        }
        for exported in loaded.values():
            exported.model.to(device).requires_grad_(False)
        featurizers = {
            name: loaded[name].config.get("featurizer", "mel") for name in ("face", "body", "guide")
        }
        if len(set(featurizers.values())) != 1:
            raise A2PError(f"the face, body and guide models use different featurizers: {featurizers}")
        vq_config, guide_config = loaded["vq"].model.config, loaded["guide"].model.config
        if (vq_config.codes, vq_config.levels) != (guide_config.codes, guide_config.levels):
            raise A2PError(
                f"{guide}: the guide predicts {guide_config.levels} x {guide_config.codes} codes, the VQ {vq} has {vq_config.levels} x {vq_config.codes}"
            )
        return cls(**loaded, paths={"face": str(face), "body": str(body), "guide": str(guide), "vq": str(vq)})

    @property
    def featurizer(self) -> str:
        return self.face.config.get("featurizer", "mel")


def _denormalize(x: np.ndarray, stats: dict | None, key: str) -> np.ndarray:
    if not stats:
        return x
    mean = np.asarray(stats[f"{key}_mean"], dtype=np.float32)
    std = np.asarray(stats[f"{key}_std"], dtype=np.float32)
    return x * np.where(std < 1e-6, 1.0, std) + mean


@dataclass(frozen=True)
class Sharing:
    """How one clip's windows are shared between ranks (rank 0 of 1: not shared)."""

    rank: int = 0
    world_size: int = 1
    all_reduce: AllReduce | None = None


@dataclass(frozen=True)
class Windowing:
    """Model window and overlap (frames) for clips longer than a window."""

    window: int = CROP_MAX_FRAMES
    overlap: int = DEFAULT_OVERLAP
    batch: int = 8
    """Windows per forward pass."""


@dataclass(frozen=True)
class PreparedClip:
    """A clip's audio features, computed once for both parts, and how it is sampled."""

    frames: int
    """Motion frames of the clip."""
    length: int
    """Frames sampled: `frames`, padded to whole keyframes when the clip is windowed."""
    plan: WindowPlan | None
    """Its windows, when it is longer than one."""
    features: torch.Tensor
    """(1, F, C) features of the (padded) audio."""


@torch.no_grad()
def prepare_clip(
    featurizer: torch.nn.Module, audio: np.ndarray, windowing: Windowing, device: torch.device
) -> PreparedClip:
    """Featurize a clip once; a clip longer than a window is padded to whole keyframes and planned."""
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    plan = None
    if frames > windowing.window:  # pad to whole keyframes; the padding is cut off after sampling
        padded = math.ceil(frames / KEYFRAME_INTERVAL) * KEYFRAME_INTERVAL
        audio = np.pad(audio, ((0, (padded - frames) * SAMPLES_PER_FRAME), (0, 0)))
        plan = WindowPlan.build(padded, windowing.window, windowing.overlap)
    with torch.autocast(device.type, enabled=False):  # features in float32 even under --bf16
        features = featurize_long(featurizer, torch.from_numpy(audio)[None].to(device))
    return PreparedClip(frames, audio.shape[0] // SAMPLES_PER_FRAME, plan, features)


@torch.no_grad()
def sample_part(
    models: Models,
    clip: PreparedClip,
    part: str,
    reps: list[int],
    *,
    setting: str,
    seed: int,
    device: torch.device,
    windowing: Windowing = Windowing(),
    sharing: Sharing = Sharing(),
    guidance: float | None = None,
) -> dict[str, np.ndarray]:
    """One part ("face" or "body", with its keyframes) of the repetitions `reps` of one clip.

    Every repetition's guide tokens and noise come from generators seeded by (seed, repetition),
    so a repetition's result does not depend on which others share its batch.
    """
    frames, features = clip.frames, clip.features
    window_args = {"plan": clip.plan, "window_batch": windowing.batch, **vars(sharing)}
    scale = DEFAULT_GUIDANCE[part] if guidance is None else guidance
    if part == "face":
        face = sample_motion(
            models.face.model, features, clip.length, reps=len(reps), setting=setting,
            guidance=scale, generators=repetition_generators(seed + 1, reps, device), **window_args,
        )  # fmt: skip
        return {"face": _denormalize(face[:, :frames].float().cpu().numpy(), models.face.stats, "face")}
    token_generators = [torch.Generator(device=device).manual_seed(seed * 7919 + rep) for rep in reps]
    rows = features.expand(len(reps), *features.shape[1:])
    keyframes = math.ceil(frames / KEYFRAME_INTERVAL)
    if clip.plan is None:
        codes = models.guide.model.generate(rows, keyframes, top_p=GUIDE_TOP_P, generator=token_generators)
    else:
        codes = generate_keyframe_codes(
            models.guide.model, rows, clip.plan, top_p=GUIDE_TOP_P, generator=token_generators
        )
    guide = models.vq.model.decode_codes(codes)  # (reps, K, 104), normalized like the body
    body = sample_motion(
        models.body.model, features, clip.length, guide=guide, reps=len(reps), setting=setting,
        guidance=scale, generators=repetition_generators(seed, reps, device), **window_args,
    )  # fmt: skip
    stats = models.body.stats
    return {
        "body": _denormalize(body[:, :frames].float().cpu().numpy(), stats, "body"),
        "keyframes": _denormalize(guide[:, :keyframes].float().cpu().numpy(), stats, "body"),
    }


def sample_clip(
    models: Models,
    featurizer: torch.nn.Module,
    audio: np.ndarray,
    *,
    reps: int,
    setting: str,
    seed: int,
    device: torch.device,
    windowing: Windowing = Windowing(),
    sharing: Sharing = Sharing(),
    guidance: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Face (reps, T, 256), body (reps, T, 104) and keyframes (reps, K, 104) of one clip."""
    clip = prepare_clip(featurizer, audio, windowing, device)  # once for both parts
    arrays: dict[str, np.ndarray] = {}
    for part in PARTS:
        arrays |= sample_part(
            models, clip, part, list(range(reps)), setting=setting, seed=seed, device=device,
            windowing=windowing, sharing=sharing, guidance=(guidance or DEFAULT_GUIDANCE)[part],
        )  # fmt: skip
    return arrays
