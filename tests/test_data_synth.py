"""`a2p data synth`: the recorded layout, determinism, turn-taking audio and motion that follows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from a2p.cli.data import main
from a2p.constants import FACE_DIM, FPS, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME, WRAPPED_POSE_CHANNEL
from data_tools.synth import STATS_FILE, loudness_drivers
from data_tools.validate import TWO_PI, find_scenes, read_scene

SCENES, SECONDS = 7, 6.0
FRAMES = int(SECONDS * FPS)
SPEECH_RMS = 0.02
"""Per-frame RMS above which a channel counts as speaking."""


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    people = ["PXB184", "TXB805"]
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--people",
                *people,
                "--scenes",
                str(SCENES),
                "--seconds",
                str(SECONDS),
            ]
        )
        == 0
    )
    return out


def test_layout_shapes_and_types(raw: Path) -> None:
    for person in ("PXB184", "TXB805"):
        folder = raw / person
        for n in range(1, SCENES + 1):
            scene = f"scene{n:02d}"
            info = sf.info(folder / f"{scene}_audio.wav")
            assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 2, "PCM_16")
            assert info.frames == FRAMES * SAMPLES_PER_FRAME
            body = np.load(folder / f"{scene}_body_pose.npy")
            face = np.load(folder / f"{scene}_face_expression.npy")
            missing = np.load(folder / f"{scene}_missing_face_frames.npy")
            assert body.shape == (FRAMES, POSE_DIM) and body.dtype == np.float32
            assert face.shape == (FRAMES, FACE_DIM) and face.dtype == np.float32
            assert missing.dtype.kind == "i" and ((missing >= 0) & (missing < FRAMES)).all()
        stats = torch.load(folder / STATS_FILE, map_location="cpu", weights_only=True)
        assert stats["pose_mean"].shape == (POSE_DIM,) and stats["code_std"].shape == (FACE_DIM,)
        assert stats["audio_mean"].shape == (2,) and set(stats) >= {"pose_std", "code_mean", "audio_std_flat"}
        for files in find_scenes(folder):  # what build reads, it accepts
            read_scene(files, person)


def test_same_seed_same_bytes_other_seed_other_data(raw: Path, tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path / "a"), "--scenes", "1", "--seconds", "2"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--scenes", "1", "--seconds", "2"]) == 0
    assert (
        main(["synth", "--out", str(tmp_path / "c"), "--scenes", "1", "--seconds", "2", "--seed", "1"]) == 0
    )
    for name in ("scene01_audio.wav", "scene01_body_pose.npy", "scene01_face_expression.npy"):
        a, b, c = ((tmp_path / d / "PXB184" / name).read_bytes() for d in "abc")
        assert a == b and a != c, name


def test_capture_1_people_need_the_wrap_others_do_not(raw: Path) -> None:
    wrapped = np.concatenate(
        [np.load(p)[:, WRAPPED_POSE_CHANNEL] for p in (raw / "PXB184").glob("*_body_pose.npy")]
    )
    assert (wrapped >= TWO_PI).any() and (wrapped < TWO_PI).any()
    other = np.concatenate(
        [np.load(p)[:, WRAPPED_POSE_CHANNEL] for p in (raw / "TXB805").glob("*_body_pose.npy")]
    )
    assert np.abs(other).max() < TWO_PI / 2


def test_two_channels_take_turns_and_sometimes_overlap(raw: Path) -> None:
    audio = np.concatenate([sf.read(p)[0] for p in sorted((raw / "PXB184").glob("*_audio.wav"))])
    rms = np.sqrt((audio.reshape(-1, SAMPLES_PER_FRAME, 2) ** 2).mean(axis=1))  # (frames, 2)
    speaking = rms > SPEECH_RMS
    both = (speaking[:, 0] & speaking[:, 1]).mean()
    assert 0.2 < speaking[:, 0].mean() < 0.8 and 0.2 < speaking[:, 1].mean() < 0.8
    assert 0.0 < both < 0.5 * min(speaking.mean(axis=0))
    assert (speaking[:, 0] & ~speaking[:, 1]).any() and (speaking[:, 1] & ~speaking[:, 0]).any()


def test_motion_follows_the_audio(raw: Path) -> None:
    """A linear map from per-frame loudness explains most of the face and body motion."""
    for kind, suffix in (("face", "face_expression.npy"), ("body", "body_pose.npy")):
        xs, ys = [], []
        for n in range(1, SCENES + 1):
            audio, _ = sf.read(raw / "TXB805" / f"scene{n:02d}_audio.wav")
            xs.append(loudness_drivers(audio, FRAMES))
            ys.append(np.load(raw / "TXB805" / f"scene{n:02d}_{suffix}").astype(np.float64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        fit, *_ = np.linalg.lstsq(x, y, rcond=None)
        explained = 1 - ((y - x @ fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert explained > 0.5, (kind, explained)
