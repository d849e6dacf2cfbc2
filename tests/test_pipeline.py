"""`a2p.inference.Pipeline`: the public Python API, and `a2p sample` as a thin layer over it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from a2p.cli.sample import main as sample_main
from a2p.errors import A2PError
from a2p.inference import Pipeline
from a2p.inference.clips import clip_seed

FRAMES = 60


@pytest.fixture(scope="module")
def pipe(exports):
    return Pipeline.from_exports(
        **{name: exports[name] for name in ("face", "body", "guide", "vq")}, device="cpu"
    )


@pytest.fixture(scope="module")
def audio():
    return np.random.default_rng(3).uniform(-0.5, 0.5, (FRAMES * 1600, 2)).astype(np.float32)


def test_sample_matches_the_command(pipe, audio, model_args, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, audio, 48_000, subtype="FLOAT")
    assert (
        sample_main(
            [str(path), *model_args, "--out", str(tmp_path / "out"), "--reps", "2", "--sampler", "ddim5"]
        )
        == 0
    )
    written = np.load(tmp_path / "out" / "clip.npz")
    out = pipe.sample(audio, reps=2, setting="ddim5", seed=clip_seed(0, "clip"))
    assert out["face"].shape == (2, FRAMES, 256) and out["body"].shape == (2, FRAMES, 104)
    assert out["keyframes"].shape == (2, math.ceil(FRAMES / 30), 104)
    for key in ("face", "body", "keyframes"):
        np.testing.assert_allclose(out[key], written[key], rtol=0, atol=1e-6, err_msg=key)


def test_init_noise_decides_the_face_and_keyframes_bypass_the_guide(pipe, audio):
    noise = {
        "face": torch.randn(2, FRAMES, 256, generator=torch.Generator().manual_seed(1)),
        "body": torch.randn(2, FRAMES, 104, generator=torch.Generator().manual_seed(2)),
    }
    keyframes = np.random.default_rng(4).normal(size=(2, 2, 104)).astype(np.float32)
    one = pipe.sample(audio, reps=2, setting="ddim5", seed=0, init_noise=noise, keyframes=keyframes)
    other = pipe.sample(audio, reps=2, setting="ddim5", seed=9, init_noise=noise, keyframes=keyframes)
    # with x_T and the keyframes given, the seed decides nothing (DDIM is deterministic)
    np.testing.assert_array_equal(one["face"], other["face"])
    np.testing.assert_array_equal(one["body"], other["body"])
    np.testing.assert_allclose(one["keyframes"], keyframes, atol=1e-5)  # normalized and back
    free = pipe.sample(audio, reps=2, setting="ddim5", seed=0)
    assert not np.allclose(free["face"], one["face"]) and not np.allclose(free["body"], one["body"])
    shifted = pipe.sample(audio, reps=2, setting="ddim5", seed=0, init_noise=noise, keyframes=keyframes + 1)
    assert not np.allclose(shifted["body"], one["body"])  # the body follows the given keyframes


def test_bad_inputs_are_refused(pipe, audio):
    with pytest.raises(
        A2PError, match=r"init_noise\['face'\] has shape \(1, 60, 256\), this clip needs \(2, 60, 256\)"
    ):
        pipe.sample(audio, reps=2, setting="ddim5", init_noise={"face": np.zeros((1, FRAMES, 256))})
    with pytest.raises(A2PError, match=r"keyframes have shape \(2, 3, 104\), this clip needs \(2, 2, 104\)"):
        pipe.sample(audio, reps=2, setting="ddim5", keyframes=np.zeros((2, 3, 104)))
    broken = audio.copy()
    broken[5, 1] = np.nan
    with pytest.raises(A2PError, match="audio holds NaN"):
        pipe.sample(broken, setting="ddim5")
    with pytest.raises(A2PError, match=r"\(samples, 2\) stereo"):
        pipe.sample(audio[:, 0], setting="ddim5")
