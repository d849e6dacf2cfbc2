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
from pathlib import Path

import numpy as np
import torch

from a2p.constants import CROP_MAX_FRAMES, KEYFRAME_INTERVAL, SAMPLES_PER_FRAME
from a2p.errors import A2PError
from a2p.models.export import Exported, load_export
from a2p.models.frontend import FrontEnd, build_front_end
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
        paths = {"face": str(face), "body": str(body), "guide": str(guide), "vq": str(vq)}
        loaded = {name: load_export(path, expect_task=name) for name, path in paths.items()}
        for exported in loaded.values():
            exported.model.to(device).requires_grad_(False)
        vq_config, guide_config = loaded["vq"].model.config, loaded["guide"].model.config
        if (vq_config.codes, vq_config.levels) != (guide_config.codes, guide_config.levels):
            raise A2PError(
                f"{guide}: the guide predicts {guide_config.levels} x {guide_config.codes} codes, the VQ {vq} has {vq_config.levels} x {vq_config.codes}"
            )
        return cls(**loaded, paths=paths)

    def front_end(self) -> FrontEnd:
        """The audio front end the face, body and guide models read (`a2p.models.frontend`)."""
        return build_front_end({"face": self.face, "body": self.body, "guide": self.guide}, self.paths)


def _moments(stats: dict | None, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not stats:
        return None
    mean = np.asarray(stats[f"{key}_mean"], dtype=np.float32)
    std = np.asarray(stats[f"{key}_std"], dtype=np.float32)
    return mean, np.where(std < 1e-6, 1.0, std)


def _denormalize(x: np.ndarray, stats: dict | None, key: str) -> np.ndarray:
    moments = _moments(stats, key)
    return x if moments is None else x * moments[1] + moments[0]


def _normalize(x: np.ndarray, stats: dict | None, key: str) -> np.ndarray:
    moments = _moments(stats, key)
    return x if moments is None else (x - moments[0]) / moments[1]


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
    features: dict[str, torch.Tensor]
    """Per model ("face", "body", "guide"): (1, F, C) features of the (padded) audio, or, when
    `per_window`, (windows, F_w, C): each window featurized alone."""
    per_window: bool = False


@torch.no_grad()
def prepare_clip(
    front_end: FrontEnd, audio: np.ndarray, windowing: Windowing, device: torch.device
) -> PreparedClip:
    """Featurize a clip once; a clip longer than a window is padded to whole keyframes and planned."""
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    plan = None
    if frames > windowing.window:  # pad to whole keyframes; the padding is cut off after sampling
        padded = math.ceil(frames / KEYFRAME_INTERVAL) * KEYFRAME_INTERVAL
        audio = np.pad(audio, ((0, (padded - frames) * SAMPLES_PER_FRAME), (0, 0)))
        plan = WindowPlan.build(padded, windowing.window, windowing.overlap)
    waveform = torch.from_numpy(audio)[None].to(device)
    length = audio.shape[0] // SAMPLES_PER_FRAME
    if plan is None or not front_end.per_window:
        return PreparedClip(frames, length, plan, front_end(waveform))
    span = plan.window * SAMPLES_PER_FRAME
    windows = [front_end(waveform[:, s * SAMPLES_PER_FRAME :][:, :span]) for s in plan.starts]
    features = {role: torch.cat([w[role] for w in windows]) for role in windows[0]}
    return PreparedClip(frames, length, plan, features, per_window=True)


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
    noise: torch.Tensor | None = None,
    keyframes: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """One part ("face" or "body", with its keyframes) of the repetitions `reps` of one clip.

    Every repetition's guide tokens and noise come from generators seeded by (seed, repetition),
    so a repetition's result does not depend on which others share its batch. `noise`
    (len(reps), clip.length, D) replaces x_T; `keyframes` (len(reps), K, 104), normalized as the
    body, replaces the guide's (the reference's evaluation with ground-truth guide poses).
    """
    frames, features = clip.frames, clip.features[part]
    window_args = {
        "plan": clip.plan, "window_batch": windowing.batch, "per_window": clip.per_window, **vars(sharing)
    }  # fmt: skip
    scale = DEFAULT_GUIDANCE[part] if guidance is None else guidance
    if part == "face":
        face = sample_motion(
            models.face.model, features, clip.length, reps=len(reps), setting=setting,
            guidance=scale, generators=repetition_generators(seed + 1, reps, device), noise=noise,
            **window_args,
        )  # fmt: skip
        return {"face": _denormalize(face[:, :frames].float().cpu().numpy(), models.face.stats, "face")}
    count = math.ceil(frames / KEYFRAME_INTERVAL)
    if keyframes is not None:
        guide = keyframes.to(device)
    else:
        guide = _guide_keyframes(models, clip, reps, seed, device)  # (reps, K, 104) normalized
    body = sample_motion(
        models.body.model, features, clip.length, guide=guide, reps=len(reps), setting=setting,
        guidance=scale, generators=repetition_generators(seed, reps, device), noise=noise, **window_args,
    )  # fmt: skip
    stats = models.body.stats
    return {
        "body": _denormalize(body[:, :frames].float().cpu().numpy(), stats, "body"),
        "keyframes": _denormalize(guide[:, :count].float().cpu().numpy(), stats, "body"),
    }


def _guide_keyframes(
    models: Models,
    clip: PreparedClip,
    reps: list[int],
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """Keyframe poses (reps, K, 104) from the guide's tokens, decoded by the VQ; normalized as the body."""
    token_generators = [torch.Generator(device=device).manual_seed(seed * 7919 + rep) for rep in reps]
    features = clip.features["guide"]
    if clip.plan is None:
        count = math.ceil(clip.frames / KEYFRAME_INTERVAL)
        rows = features.expand(len(reps), *features.shape[1:])
        codes = models.guide.model.generate(rows, count, top_p=GUIDE_TOP_P, generator=token_generators)
    else:
        codes = generate_keyframe_codes(
            models.guide.model, features, clip.plan, top_p=GUIDE_TOP_P, generator=token_generators,
            per_window=clip.per_window,
        )  # fmt: skip
    return models.vq.model.decode_codes(codes)


class Pipeline:
    """Audio in, face and body motion out: the four exported models and their audio front end on a device.

    The public way to sample programmatically (`a2p sample` runs the same class over files and
    ranks)::

        pipe = Pipeline.from_exports(face=..., body=..., guide=..., vq=..., device="cpu")
        out = pipe.sample(audio, reps=3, setting="ddim500", face_guidance=10.0, body_guidance=2.0,
                          seed=0, init_noise=None, keyframes=None)
        out["face"]  # (reps, T, 256); out["body"]  # (reps, T, 104); out["keyframes"]  # (reps, K, 104)
    """

    def __init__(
        self,
        models: Models,
        front_end: FrontEnd,
        device: torch.device | str = "cpu",
        windowing: Windowing = Windowing(),
    ) -> None:
        self.models = models
        self.device = torch.device(device)
        self.front_end = front_end.to(self.device)
        self.windowing = windowing
        if front_end.max_frames is not None and windowing.window > front_end.max_frames:
            raise A2PError(
                f"a window of {windowing.window} frames is longer than these models read at once "
                f"({front_end.max_frames} frames, {models.paths.get('face', 'the face model')}): use --window {front_end.max_frames} or less"
            )

    @classmethod
    def from_exports(
        cls,
        *,
        face: str | Path,
        body: str | Path,
        guide: str | Path,
        vq: str | Path,
        device: torch.device | str = "cpu",
        windowing: Windowing = Windowing(),
    ) -> Pipeline:
        """Load the four exports (checked to fit together) and build their audio front end on `device`."""
        device = torch.device(device)
        models = Models.load(str(face), str(body), str(guide), str(vq), device)
        return cls(models, models.front_end(), device, windowing)

    def prepare(self, audio: np.ndarray) -> PreparedClip:
        """Featurize a clip (samples, 2) once for both parts."""
        return prepare_clip(self.front_end, audio, self.windowing, self.device)

    @torch.no_grad()
    def sample(
        self,
        audio: np.ndarray,
        *,
        reps: int = 1,
        setting: str = "ddim500",
        face_guidance: float = DEFAULT_GUIDANCE["face"],
        body_guidance: float = DEFAULT_GUIDANCE["body"],
        seed: int = 0,
        init_noise: dict[str, np.ndarray | torch.Tensor] | None = None,
        keyframes: np.ndarray | torch.Tensor | None = None,
        sharing: Sharing = Sharing(),
    ) -> dict[str, np.ndarray]:
        """Face (reps, T, 256), body (reps, T, 104) and keyframes (reps, ceil(T / 30), 104) in data units.

        `audio` is a float (samples, 2) waveform at 48 kHz; T = samples // 1600. `init_noise`
        {"face": (reps, T, 256), "body": (reps, T, 104)} is x_T in the diffusion's normalized
        units (for a clip longer than a window, T rounded up to whole keyframes); `keyframes`
        (reps, ceil(T / 30), 104), in data units, bypasses the guide.
        """
        audio = _waveform(audio)
        clip = self.prepare(audio)
        rows = list(range(reps))
        noise = {part: self._noise(init_noise, part, reps, clip) for part in PARTS}
        guide = None if keyframes is None else self._keyframes(keyframes, reps, clip)
        guidance = {"face": face_guidance, "body": body_guidance}
        arrays: dict[str, np.ndarray] = {}
        for part in PARTS:
            arrays |= sample_part(
                self.models, clip, part, rows, setting=setting, seed=seed, device=self.device,
                windowing=self.windowing, sharing=sharing, guidance=guidance[part], noise=noise[part],
                keyframes=guide if part == "body" else None,
            )  # fmt: skip
        return arrays

    def _noise(
        self, init_noise: dict | None, part: str, reps: int, clip: PreparedClip
    ) -> torch.Tensor | None:
        if not init_noise or init_noise.get(part) is None:
            return None
        noise = torch.as_tensor(init_noise[part], dtype=torch.float32)
        dim = getattr(self.models, part).model.config.motion_dim
        if tuple(noise.shape) != (reps, clip.length, dim):
            raise A2PError(
                f"init_noise[{part!r}] has shape {tuple(noise.shape)}, this clip needs {(reps, clip.length, dim)}"
            )
        return noise.to(self.device)

    def _keyframes(self, keyframes: np.ndarray | torch.Tensor, reps: int, clip: PreparedClip) -> torch.Tensor:
        values = np.asarray(keyframes, dtype=np.float32)
        count = math.ceil(clip.length / KEYFRAME_INTERVAL)
        dim = self.models.body.model.config.guide_dim
        if values.shape != (reps, count, dim):
            raise A2PError(f"keyframes have shape {values.shape}, this clip needs {(reps, count, dim)}")
        if not np.isfinite(values).all():
            raise A2PError("keyframes hold NaN or infinite values")
        return torch.from_numpy(_normalize(values, self.models.body.stats, "body")).to(self.device)


def _waveform(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32 (samples, 2) waveform, checked: at least one motion frame long, finite."""
    values = np.asarray(audio.cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != 2:
        raise A2PError(f"audio must be a (samples, 2) stereo waveform at 48 kHz, got shape {values.shape}")
    if values.shape[0] < SAMPLES_PER_FRAME:
        raise A2PError(
            f"audio of {values.shape[0]} samples is shorter than one motion frame ({SAMPLES_PER_FRAME})"
        )
    if not np.isfinite(values).all():
        raise A2PError("audio holds NaN or infinite samples")
    return values
