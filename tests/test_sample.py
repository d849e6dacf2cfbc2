"""`a2p sample` end to end on tiny exported models: shapes, 1 vs 2 processes, rerun, bad audio."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from a2p.cli.sample import main as sample_main


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", rng.uniform(-0.5, 0.5, (48_000 * 2, 2)), 48_000, subtype="PCM_16")
    sf.write(folder / "b.flac", rng.uniform(-0.5, 0.5, (16_000 * 3, 1)), 16_000)  # mono, 16 kHz
    sf.write(folder / "c.wav", rng.uniform(-0.5, 0.5, (48_000 + 700, 2)), 48_000)  # not whole frames
    (folder / "d.wav").write_bytes(b"RIFF not really a wav")
    return folder


def test_sample_writes_one_npz_per_clip_and_reports_bad_audio(model_args, clips, tmp_path, capsys):
    out = tmp_path / "one"
    code = sample_main([str(clips), *model_args, "--out", str(out), "--reps", "2", "--sampler", "ddim5"])
    assert code == 1  # d.wav failed
    text = capsys.readouterr().out
    assert (
        "12 items sampled" in text
        and "1 clips failed" in text
        and "3 clips written" in text
        and "d.wav: cannot read audio" in text
    )
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
        [str(clips / "a.wav"), *model_args, "--out", str(out), "--reps", "2", "--sampler", "ddim5"]
    )
    assert code == 0 and "4 already done" in capsys.readouterr().out
    assert (out / "a.npz").stat().st_mtime_ns == before

    # the default sampler is named; a folder sampled with other settings is refused, untouched
    code = sample_main([str(clips / "a.wav"), *model_args, "--out", str(out), "--reps", "2"])
    captured = capsys.readouterr()
    assert code == 2 and "sampler ddim100 (the default:" in captured.out
    assert "other settings (sampler: 'ddim5' -> 'ddim100')" in captured.err
    assert (out / "a.npz").stat().st_mtime_ns == before


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "a2p.cli.sample", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_same_outputs(first, second, names):
    """Equal up to float rounding: ranks batch different repetitions together (rows are independent)."""
    for name in names:
        a, b = np.load(first / f"{name}.npz"), np.load(second / f"{name}.npz")
        for key in ("face", "body", "keyframes"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-3, err_msg=f"{name} {key}")


@pytest.mark.parametrize("nproc", [2, 3])
def test_sharded_processes_give_the_same_arrays_as_one(model_args, clips, tmp_path, nproc):
    listed = tmp_path / "clips.txt"
    listed.write_text("\n".join(str(clips / name) for name in ("a.wav", "b.flac", "c.wav")))
    args = [str(listed), *model_args, "--reps", "2", "--sampler", "ddim5", "--seed", "4"]
    assert sample_main([*args, "--out", str(tmp_path / "single")]) == 0
    done = torchrun(nproc, *args, "--out", str(tmp_path / "sharded"))
    assert done.returncode == 0, done.stderr[-2000:]
    # 3 clips x 2 parts x 2 reps = 12 items, split evenly; every rank assembles its clips
    assert sum(int(n) for n in re.findall(r"(\d+) items sampled", done.stdout)) == 12
    assert done.stdout.count(f"{12 // nproc} items sampled") == nproc, done.stdout
    assert_same_outputs(tmp_path / "single", tmp_path / "sharded", "abc")
    assert not any((tmp_path / "sharded" / ".parts").rglob("*.npz"))  # parts gathered and removed


def test_one_long_clip_split_by_windows_over_ranks_equals_one_process(model_args, tmp_path):
    clip = tmp_path / "long.wav"
    sf.write(clip, np.random.default_rng(1).uniform(-0.5, 0.5, (48_000 * 5 + 3_000, 2)), 48_000)  # 151 frames
    args = [
        str(clip),
        *model_args,
        "--reps",
        "2",
        "--sampler",
        "ddim4",
        "--window",
        "60",
        "--overlap",
        "30",
    ]
    assert sample_main([*args, "--out", str(tmp_path / "single")]) == 0
    done = torchrun(2, *args, "--shard", "windows", "--out", str(tmp_path / "windows"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_outputs(tmp_path / "single", tmp_path / "windows", ["long"])
    out = np.load(tmp_path / "windows" / "long.npz")
    assert out["body"].shape == (2, 151, 104) and out["keyframes"].shape == (2, 6, 104)
    assert int(out["window"]) == 60 and int(out["overlap"]) == 30


def test_a_rerun_after_a_kill_samples_only_the_missing_items(model_args, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        sf.write(folder / f"clip{i}.wav", rng.uniform(-0.5, 0.5, (48_000 * 2, 2)), 48_000)
    args = [
        str(folder),
        *model_args,
        "--reps",
        "2",
        "--sampler",
        "ddim40",
        "--out",
        str(tmp_path / "out"),
    ]
    command = [sys.executable, "-m", "a2p.cli.sample", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    parts = tmp_path / "out" / ".parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.rglob("*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.relative_to(parts) for p in parts.rglob("*.npz"))
    assert 3 <= len(finished) < 16, finished  # killed part-way: 4 clips x 2 parts x 2 reps
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{16 - len(finished)} items sampled, {len(finished)} already done" in done.stdout, done.stdout
    for i in range(4):
        assert np.load(tmp_path / "out" / f"clip{i}.npz")["face"].shape == (2, 60, 256)


def test_sampling_a_split_names_chunks_and_writes_plots_and_reference_results(
    model_args, tiny_shards, clips, tmp_path
):
    out = tmp_path / "split"
    args = [*model_args, "--reps", "2", "--sampler", "ddim3", "--out", str(out)]
    assert sample_main([*args, "--data", str(tiny_shards["plain"]), "--split", "test"]) == 0
    names = sorted(p.stem for p in out.glob("*.npz"))
    assert len(names) == 4  # 4 test scenes of 20 s: one whole 600-frame chunk each
    for name in names:
        scene, first = name.rsplit("_", 1)
        assert first == "000000"
        assert np.load(out / f"{name}.npz")["body"].shape == (2, 600, 104)

    files = tmp_path / "files"
    assert sample_main([str(clips / "a.wav"), *args[:-1], str(files), "--plot", "--results-npy"]) == 0
    png = (files / "a.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    face = np.load(files / "reference" / "a" / "face_results.npy", allow_pickle=True).item()
    body = np.load(files / "reference" / "a" / "body_results.npy", allow_pickle=True).item()
    assert face["motions"].shape == (2, 256, 1, 60) and body["motions"].shape == (2, 104, 1, 60)
    np.testing.assert_allclose(
        body["motions"][:, :, 0].transpose(0, 2, 1), np.load(files / "a.npz")["body"], rtol=1e-6
    )


def test_a_split_without_a_whole_chunk_is_refused_not_sampled_as_nothing(model_args, tmp_path, capsys):
    """Scenes of 4 s hold no 600-frame chunk: sample and eval both say so instead of doing nothing."""
    from a2p.cli.data import main as data_main
    from a2p.cli.eval import main as eval_main

    synth = ["synth", "--out", str(tmp_path / "raw"), "--scenes", "8", "--seconds", "4", "--seed", "1"]
    assert data_main(synth) == 0
    assert (
        data_main(["build", "--src", str(tmp_path / "raw" / "PXB184"), "--out", str(tmp_path / "short")]) == 0
    )
    capsys.readouterr()
    data = str(tmp_path / "short")
    assert sample_main([*model_args, "--out", str(tmp_path / "out"), "--data", data, "--split", "test"]) == 2
    message = "split 'test' has no whole 600-frame chunk to evaluate on (its longest window holds 120 frames)"
    assert message in capsys.readouterr().err
    assert eval_main(["--data", data, "--results", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
