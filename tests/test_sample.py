"""`a2p sample` end to end on tiny exported models: shapes, 1 vs 2 processes, rerun, bad audio."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from a2p.cli.export import main as export_main
from a2p.cli.sample import main as sample_main
from a2p.cli.train import main as train_main

COMMON = [
    "--preset",
    "debug",
    "--max-steps",
    "1",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def exports(tiny_shards, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exports")
    data = str(tiny_shards["plain"])
    files = {}
    for task in ("face", "body", "vq", "guide"):
        extra = ["--vq", str(files["vq"])] if task == "guide" else []
        assert train_main([task, "--data", data, "--run-dir", str(root / task), *COMMON, *extra]) == 0
        files[task] = root / f"{task}.safetensors"
        assert export_main([str(root / task), "--out", str(files[task])]) == 0
    return files


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", rng.uniform(-0.5, 0.5, (48_000 * 2, 2)), 48_000, subtype="PCM_16")
    sf.write(folder / "b.flac", rng.uniform(-0.5, 0.5, (16_000 * 3, 1)), 16_000)  # mono, 16 kHz
    sf.write(folder / "c.wav", rng.uniform(-0.5, 0.5, (48_000 + 700, 2)), 48_000)  # not whole frames
    (folder / "d.wav").write_bytes(b"RIFF not really a wav")
    return folder


def model_args(exports):
    return [arg for name in ("face", "body", "guide", "vq") for arg in (f"--{name}", str(exports[name]))]


def test_sample_writes_one_npz_per_clip_and_reports_bad_audio(exports, clips, tmp_path, capsys):
    out = tmp_path / "one"
    code = sample_main(
        [str(clips), *model_args(exports), "--out", str(out), "--reps", "2", "--sampler", "ddim5"]
    )
    assert code == 1  # d.wav failed
    text = capsys.readouterr().out
    assert "3 sampled" in text and "1 failed" in text and "d.wav: cannot read audio" in text
    a = np.load(out / "a.npz")
    assert (
        a["face"].shape == (2, 60, 256)
        and a["body"].shape == (2, 60, 104)
        and a["keyframes"].shape == (2, 2, 104)
    )
    assert np.isfinite(a["face"]).all() and np.isfinite(a["body"]).all()
    assert not np.allclose(a["body"][0], a["body"][1])  # repetitions differ
    assert np.load(out / "b.npz")["face"].shape == (2, 90, 256)  # 3 s at 30 fps after resampling
    assert np.load(out / "c.npz")["body"].shape == (2, 30, 104)
    assert not (out / "d.npz").exists()

    before = (out / "a.npz").stat().st_mtime_ns
    code = sample_main(
        [str(clips / "a.wav"), *model_args(exports), "--out", str(out), "--reps", "2", "--sampler", "ddim5"]
    )
    assert code == 0 and "1 already done" in capsys.readouterr().out
    assert (out / "a.npz").stat().st_mtime_ns == before


def test_two_processes_give_the_same_arrays_as_one(exports, clips, tmp_path):
    listed = tmp_path / "clips.txt"
    listed.write_text("\n".join(str(clips / name) for name in ("a.wav", "b.flac", "c.wav")))
    args = [str(listed), *model_args(exports), "--reps", "2", "--sampler", "ddim5", "--seed", "4"]
    assert sample_main([*args, "--out", str(tmp_path / "single")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "a2p.cli.sample", *args, "--out", str(tmp_path / "double")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("a", "b", "c"):
        single, double = (
            np.load(tmp_path / "single" / f"{name}.npz"),
            np.load(tmp_path / "double" / f"{name}.npz"),
        )
        for key in ("face", "body", "keyframes"):
            np.testing.assert_allclose(single[key], double[key], rtol=1e-5, atol=1e-5)
