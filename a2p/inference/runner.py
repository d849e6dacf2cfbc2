"""Batch inference: audio clips in, face and body motion out, one `.npz` per clip.

Per clip: read and check the audio -> featurize once -> guide transformer (KV cache, top-p) for
the 1 fps keyframe tokens of every repetition -> VQ decode to keyframe poses -> body diffusion on
audio + keyframes; face diffusion on audio. Repetitions and the CFG rows run as one batch.

Across processes (torchrun / accelerate launch / srun) clips are split strided by rank; every
clip's noise comes from a seed derived from (--seed, clip name), so its output does not depend on
how many processes ran the job. Each output is written to a temporary name and renamed; a rerun
skips clips whose output exists. A clip that cannot be read is reported and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from a2p.constants import AUDIO_CHANNELS, FPS, KEYFRAME_INTERVAL, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.errors import A2PError, DataError
from a2p.inference.export import Exported, load_export
from a2p.inference.sampling import sample_motion

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
DEFAULT_GUIDANCE = {"face": 10.0, "body": 2.0}
"""Classifier-free guidance scales of the reference (DESIGN.md)."""
GUIDE_TOP_P = 0.94


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


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """(S, 2) float32 audio at 48 kHz whose length is whole frames, and warnings about fixes made."""
    warnings = []
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"{path}: cannot read audio ({err})") from err
    if audio.shape[1] == 1:
        audio = np.concatenate([audio, np.zeros_like(audio)], axis=1)
        warnings.append("mono audio: the partner channel is silent")
    elif audio.shape[1] != AUDIO_CHANNELS:
        raise DataError(f"{path}: {audio.shape[1]} channels; expected 2 (this person, then the partner) or 1")
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: audio holds NaN or Inf")
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio.T.copy()), rate, SAMPLE_RATE).T.numpy()
        warnings.append(f"resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    if frames < KEYFRAME_INTERVAL:
        raise DataError(f"{path}: {audio.shape[0] / SAMPLE_RATE:.2f} s of audio is shorter than one second")
    return np.ascontiguousarray(audio[: frames * SAMPLES_PER_FRAME]), warnings


def clip_seed(seed: int, name: str) -> int:
    """A seed that depends only on the run's seed and the clip's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _denormalize(x: np.ndarray, stats: dict | None, key: str) -> np.ndarray:
    if not stats:
        return x
    mean = np.asarray(stats[f"{key}_mean"], dtype=np.float32)
    std = np.asarray(stats[f"{key}_std"], dtype=np.float32)
    return x * np.where(std < 1e-6, 1.0, std) + mean


@torch.no_grad()
def sample_clip(
    models: Models,
    featurizer: torch.nn.Module,
    audio: np.ndarray,
    *,
    reps: int,
    setting: str,
    seed: int,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Face (reps, T, 256), body (reps, T, 104) and keyframes (reps, K, 104) of one clip."""
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    keyframes = math.ceil(frames / KEYFRAME_INTERVAL)
    features = featurizer(torch.from_numpy(audio)[None].to(device))  # (1, F, C), once per clip
    generators = [torch.Generator(device=device).manual_seed(seed * 7919 + rep) for rep in range(reps)]
    codes = models.guide.model.generate(
        features.expand(reps, *features.shape[1:]), keyframes, top_p=GUIDE_TOP_P, generator=generators
    )
    guide = models.vq.model.decode_codes(codes)  # (reps, K, 104), normalized like the body
    body = sample_motion(
        models.body.model,
        features,
        frames,
        guide=guide,
        reps=reps,
        setting=setting,
        guidance=DEFAULT_GUIDANCE["body"],
        seed=seed,
    )
    face = sample_motion(
        models.face.model,
        features,
        frames,
        reps=reps,
        setting=setting,
        guidance=DEFAULT_GUIDANCE["face"],
        seed=seed + 1,
    )
    stats = models.body.stats
    return {
        "face": _denormalize(face.cpu().numpy(), models.face.stats, "face"),
        "body": _denormalize(body.cpu().numpy(), stats, "body"),
        "keyframes": _denormalize(guide.float().cpu().numpy(), stats, "body"),
    }


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray | str | int | float]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def list_clips(inputs: list[str]) -> list[Path]:
    """Audio files named directly, found in directories, or listed one per line in .txt files."""
    clips: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            clips += sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.suffix == ".txt":
            clips += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
        else:
            clips.append(path)
    names = [clip.stem for clip in clips]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise A2PError(f"several clips share the name(s) {duplicates}: outputs are named by clip")
    return clips


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run(
    clips: list[Path],
    models: Models,
    out_dir: Path,
    *,
    reps: int,
    setting: str,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    progress: bool = True,
) -> Summary:
    """Sample this rank's share of `clips` (every world_size-th, starting at rank) into out_dir."""
    from tqdm import tqdm

    from a2p.models.audio import build_featurizer

    out_dir.mkdir(parents=True, exist_ok=True)
    featurizer = build_featurizer(models.featurizer).to(device)
    summary = Summary()
    mine = clips[rank::world_size]
    for clip in tqdm(mine, desc=f"rank {rank}", disable=not progress, unit="clip"):
        target = out_dir / f"{clip.stem}.npz"
        if target.exists():
            summary.skipped.append(clip.stem)
            continue
        try:
            audio, warnings = read_audio(clip)
        except DataError as err:
            logger.error("skipping %s", err)
            summary.failed[clip.stem] = str(err)
            continue
        for warning in warnings:
            logger.warning("%s: %s", clip, warning)
        arrays = sample_clip(
            models,
            featurizer,
            audio,
            reps=reps,
            setting=setting,
            seed=clip_seed(seed, clip.stem),
            device=device,
        )
        write_npz_atomic(
            target,
            {
                **arrays,
                "fps": FPS,
                "sampler": setting,
                "seed": clip_seed(seed, clip.stem),
                "source": str(clip),
                "models": json.dumps(models.paths),
            },
        )
        summary.done.append(clip.stem)
    return summary
