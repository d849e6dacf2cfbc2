"""A synthetic dataset in the recorded layout (`a2p data synth`), for demos and tests.

Per scene the two audio channels hold speech-like turns: harmonic bursts (a gliding pitch,
formant-shaped harmonics, syllable-rate amplitude modulation) that take turns, sometimes overlap,
with short backchannels of the listener and a little crosstalk and noise. Poses and face codes are
driven by the per-frame loudness of each channel through fixed random projections (one set per
person) plus smooth noise, so a model can learn audio -> motion. Everything is a pure function of
(seed, person, scene number).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from a2p.constants import (
    AUDIO_CHANNELS,
    FACE_DIM,
    FPS,
    POSE_DIM,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    WRAPPED_POSE_CHANNEL,
    WRAPPED_POSE_PEOPLE,
)
from data_tools.validate import AUDIO_SUFFIX, BODY_SUFFIX, FACE_SUFFIX, MISSING_FACE_SUFFIX, TWO_PI

logger = logging.getLogger(__name__)

DEFAULT_PEOPLE = ("PXB184",)
DEFAULT_SCENES = 10
DEFAULT_SECONDS = 30.0
STATS_FILE = "data_stats.pth"
AUDIO_SUBTYPE = "PCM_16"

TURN_SECONDS = (1.5, 5.0)
"""Range of a speaking turn's length."""
TURN_GAP_SECONDS = (-0.8, 0.6)
"""Range of the gap between turns; negative gaps are overlaps."""
BACKCHANNEL_PROBABILITY = 0.35
"""Chance that the listener says something short during a turn."""
BACKCHANNEL_SECONDS = (0.25, 0.6)
SYLLABLE_HZ = (3.0, 6.0)
PITCH_HZ = ((95.0, 140.0), (170.0, 240.0))
"""Range of the mean pitch of channel 0's and channel 1's speaker."""
HARMONICS = 24
FORMANT_HZ = ((350.0, 900.0), (900.0, 2300.0), (2300.0, 3200.0))
FORMANT_BANDWIDTH_HZ = 250.0
EDGE_SECONDS = 0.04
"""Raised-cosine fade at the ends of every burst, so turns do not click."""
CROSSTALK = 0.04
"""Fraction of the partner's voice each microphone picks up."""
NOISE_LEVEL = 2e-3
PEAK_LEVEL = 0.6

LOUDNESS_FLOOR = 1e-3
"""Added to the per-frame RMS before the log: silence maps to a finite loudness."""
DRIVER_SMOOTHING_FRAMES = (3, 15)
"""Box-filter widths: a fast and a slow version of each channel's loudness."""
DRIVERS = 6
"""Loudness drivers per frame: fast and slow loudness of each channel, own onset, a constant."""
MOTION_NOISE_FRAMES = 9
"""Box-filter width of the smooth noise added to poses and face codes."""
BODY_DRIVE_SCALE, BODY_NOISE_SCALE = 0.08, 0.02
FACE_DRIVE_SCALE, FACE_NOISE_SCALE = 0.6, 0.15
MISSING_FACE_RUNS_PER_MINUTE = 3.0
MISSING_FACE_RUN_FRAMES = (1, 20)
WRAPPED_BASE_ANGLE = TWO_PI - 0.4
"""Capture-1/2 people: pose channel 3 sways around this angle, so it leaves [0, 2 pi) at times."""
WRAPPED_SWAY = 0.9


@dataclass
class PersonStyle:
    """The fixed random maps from audio loudness to motion of one synthetic person."""

    body_base: np.ndarray  # (POSE_DIM,)
    body_drive: np.ndarray  # (drivers, POSE_DIM)
    face_base: np.ndarray  # (FACE_DIM,)
    face_drive: np.ndarray  # (drivers, FACE_DIM)


def _person_seed(seed: int, person: str) -> list[int]:
    """A stable (not Python-hash based) seed sequence for one person."""
    return [seed, zlib.crc32(person.encode())]


def person_style(seed: int, person: str) -> PersonStyle:
    rng = np.random.default_rng(_person_seed(seed, person))
    return PersonStyle(
        body_base=rng.normal(0.0, 0.5, POSE_DIM),
        body_drive=rng.normal(0.0, 1.0, (DRIVERS, POSE_DIM)),
        face_base=rng.normal(0.0, 1.0, FACE_DIM),
        face_drive=rng.normal(0.0, 1.0, (DRIVERS, FACE_DIM)),
    )


def _box_smooth(x: np.ndarray, width: int, passes: int = 3) -> np.ndarray:
    """Smooth along axis 0 with `passes` centred box filters (close to a Gaussian), edges held."""
    if width <= 1:
        return x
    pad = width // 2
    for _ in range(passes):
        padded = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], width - 1 - pad, 0)])
        cumsum = np.cumsum(np.concatenate([np.zeros_like(x[:1]), padded]), axis=0)
        x = (cumsum[width:] - cumsum[:-width]) / width
    return x


def _burst(rng: np.random.Generator, samples: int, pitch_range: tuple[float, float]) -> np.ndarray:
    """One voiced burst: gliding pitch, formant-weighted harmonics, syllable-rate modulation."""
    t = np.arange(samples) / SAMPLE_RATE
    f0_mean = rng.uniform(*pitch_range)
    f0 = f0_mean * (1.0 + 0.12 * np.sin(TWO_PI * rng.uniform(0.2, 0.8) * t + rng.uniform(0, TWO_PI)))
    phase = TWO_PI * np.cumsum(f0) / SAMPLE_RATE
    formants = [rng.uniform(*band) for band in FORMANT_HZ]
    harmonics = np.arange(1, HARMONICS + 1)
    gains = sum(
        np.exp(-(((harmonics * f0_mean - centre) / FORMANT_BANDWIDTH_HZ) ** 2)) for centre in formants
    )
    gains = gains + 0.1 / harmonics
    gains[harmonics * f0_mean > SAMPLE_RATE / 2 * 0.9] = 0.0
    voice = np.zeros(samples)
    for k, gain in zip(harmonics, gains):
        if gain > 0:
            voice += gain * np.sin(k * phase)
    syllables = np.abs(np.sin(np.pi * rng.uniform(*SYLLABLE_HZ) * t + rng.uniform(0, np.pi))) ** 1.5
    edge = min(int(EDGE_SECONDS * SAMPLE_RATE), samples // 2)
    fade = np.ones(samples)
    if edge > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, edge))
        fade[:edge], fade[-edge:] = ramp, ramp[::-1]
    return voice / (np.abs(gains).sum() + 1e-9) * syllables * fade


def _add(track: np.ndarray, start: int, burst: np.ndarray) -> None:
    stop = min(start + burst.size, track.size)
    if stop > start:
        track[start:stop] += burst[: stop - start]


def synth_audio(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames * SAMPLES_PER_FRAME, 2) float audio in [-1, 1] of a two-person conversation."""
    total = frames * SAMPLES_PER_FRAME
    tracks = np.zeros((AUDIO_CHANNELS, total))
    speaker = int(rng.integers(AUDIO_CHANNELS))
    start = int(rng.uniform(0.0, 0.5) * SAMPLE_RATE)
    while start < total:
        length = int(rng.uniform(*TURN_SECONDS) * SAMPLE_RATE)
        _add(tracks[speaker], start, _burst(rng, length, PITCH_HZ[speaker]))
        if rng.random() < BACKCHANNEL_PROBABILITY:
            short = int(rng.uniform(*BACKCHANNEL_SECONDS) * SAMPLE_RATE)
            at = start + int(rng.uniform(0.2, 0.8) * max(length - short, 1))
            _add(tracks[1 - speaker], at, 0.5 * _burst(rng, short, PITCH_HZ[1 - speaker]))
        start = max(start + length + int(rng.uniform(*TURN_GAP_SECONDS) * SAMPLE_RATE), start + 1)
        speaker = 1 - speaker
    mixed = tracks + CROSSTALK * tracks[::-1] + rng.normal(0.0, NOISE_LEVEL, tracks.shape)
    mixed *= PEAK_LEVEL / max(np.abs(mixed).max(), 1e-9)
    return mixed.T.copy()


def loudness_drivers(audio: np.ndarray, frames: int) -> np.ndarray:
    """(frames, DRIVERS) standardized per-frame loudness features of both channels."""
    blocks = audio[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME, AUDIO_CHANNELS)
    loudness = np.log(np.sqrt((blocks**2).mean(axis=1)) + LOUDNESS_FLOOR)  # (frames, 2)
    loudness = (loudness - loudness.mean(0)) / (loudness.std(0) + 1e-6)
    fast, slow = (_box_smooth(loudness, width) for width in DRIVER_SMOOTHING_FRAMES)
    onset = np.diff(fast[:, :1], axis=0, prepend=fast[:1, :1]) * 4.0
    return np.concatenate([fast, slow, onset, np.ones((frames, 1))], axis=1)


def synth_scene(
    seed: int, person: str, scene: int, frames: int, style: PersonStyle
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Audio (S, 2) float, body (T, 104), face (T, 256) float32 and missing-face indices of one scene."""
    rng = np.random.default_rng([*_person_seed(seed, person), scene])
    audio = synth_audio(rng, frames)
    drivers = loudness_drivers(audio, frames)  # (T, DRIVERS)
    body_noise = _box_smooth(rng.normal(0.0, 1.0, (frames, POSE_DIM)), MOTION_NOISE_FRAMES)
    body = style.body_base + BODY_DRIVE_SCALE * drivers @ style.body_drive + BODY_NOISE_SCALE * body_noise
    face_noise = _box_smooth(rng.normal(0.0, 1.0, (frames, FACE_DIM)), MOTION_NOISE_FRAMES)
    face = style.face_base + FACE_DRIVE_SCALE * drivers @ style.face_drive + FACE_NOISE_SCALE * face_noise
    if person in WRAPPED_POSE_PEOPLE:
        sway = _box_smooth(rng.normal(0.0, 1.0, (frames, 1)), FPS * 2)[:, 0]
        sway = sway / (np.abs(sway).max() + 1e-9)
        body[:, WRAPPED_POSE_CHANNEL] = WRAPPED_BASE_ANGLE + WRAPPED_SWAY * sway + 0.05 * drivers[:, 0]
    runs = rng.poisson(MISSING_FACE_RUNS_PER_MINUTE * frames / (60 * FPS))
    missing = set()
    for _ in range(runs):
        begin = int(rng.integers(frames))
        missing.update(range(begin, min(begin + int(rng.integers(*MISSING_FACE_RUN_FRAMES)), frames)))
    missing_frames = np.array(sorted(missing), dtype=np.int64)
    return audio, body.astype(np.float32), face.astype(np.float32), missing_frames


def synth_person(out: Path, person: str, scenes: int, seconds: float, seed: int) -> Path:
    """Write one person folder of `scenes` scenes of `seconds` each, and its data_stats.pth."""
    folder = out / person
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * FPS)
    if frames < 1:
        raise ValueError(f"a scene needs at least one frame, got {seconds} s")
    style = person_style(seed, person)
    sums = {"pose": [], "code": [], "audio": []}
    for number in tqdm(range(1, scenes + 1), desc=f"synth {person}", unit="scene", disable=None):
        audio, body, face, missing = synth_scene(seed, person, number, frames, style)
        name = f"scene{number:02d}"
        sf.write(folder / f"{name}_{AUDIO_SUFFIX}", audio, SAMPLE_RATE, subtype=AUDIO_SUBTYPE)
        np.save(folder / f"{name}_{BODY_SUFFIX}", body)
        np.save(folder / f"{name}_{FACE_SUFFIX}", face)
        np.save(folder / f"{name}_{MISSING_FACE_SUFFIX}", missing)
        valid = np.ones(frames, dtype=bool)
        valid[missing] = False
        sums["pose"].append(body)
        sums["code"].append(face[valid])
        sums["audio"].append(audio[:: SAMPLES_PER_FRAME // 4])  # a subsample is plenty for audio stats
    import torch  # only here: `a2p data ...` commands that do not synthesize start without torch

    stats = {}
    for key, parts in sums.items():
        values = np.concatenate(parts).astype(np.float64)
        stats[f"{key}_mean"] = torch.from_numpy(values.mean(0)).float()
        stats[f"{key}_std"] = torch.from_numpy(values.std(0)).float()
    stats["audio_std_flat"] = stats.pop("audio_std")  # the reference's key names
    torch.save(stats, folder / STATS_FILE)
    logger.info("wrote %d scenes of %.1f s for %s to %s", scenes, frames / FPS, person, folder)
    return folder


def synthesize(
    out: Path,
    people: list[str] | tuple[str, ...] = DEFAULT_PEOPLE,
    scenes: int = DEFAULT_SCENES,
    seconds: float = DEFAULT_SECONDS,
    seed: int = 0,
) -> list[Path]:
    """Write a synthetic dataset (one folder per person) under `out`; returns the person folders."""
    return [synth_person(Path(out), person, scenes, seconds, seed) for person in people]
