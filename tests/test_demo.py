"""`a2p demo` end to end at its smallest size: every artefact, a rerun that skips, clear failures."""

import argparse
import json

import numpy as np
import pytest

from a2p.cli.demo import CLIPS, TASKS, Demo, StepFailed, main, run_command
from a2p.constants import CROP_MAX_FRAMES, FPS, POSE_DIM

pytestmark = pytest.mark.slow

PERSON = "PXB184"
# The smallest demo: 2 train scenes (one shard per rank), test scenes of one 600-frame chunk.
SMALLEST = ["--people", PERSON, "--scenes", "8", "--seconds", "20", "--steps", "2", "--nproc", "2"]
REPS = 2


def scalar_and_image_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["images"])


def test_the_demo_makes_every_artefact_and_a_rerun_skips_every_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), *SMALLEST]) == 0
    text = capsys.readouterr().out
    assert "a2p demo made, in" in text and f"tensorboard --logdir {out / 'runs'}" in text

    for task in TASKS:
        assert (out / "exports" / PERSON / f"{task}.safetensors").is_file(), task
        scalars, images = scalar_and_image_tags(out / "runs" / PERSON / task)
        assert "train/loss" in scalars, task
        if task in ("face", "body"):
            assert "eval/fd_g" in scalars and "eval/motion" in images, task

    clips = out / "samples" / PERSON / "clips"
    frames = {"short": 8 * FPS, "long": 27 * FPS}
    assert frames["long"] > CROP_MAX_FRAMES  # sampled as overlapping windows
    for name in CLIPS:
        result = np.load(clips / f"{name}.npz")
        assert result["body"].shape == (REPS, frames[name], POSE_DIM), name
        assert np.isfinite(result["body"]).all() and np.isfinite(result["face"]).all()
        assert (clips / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        for part in ("face", "body"):
            assert (clips / "reference" / name / f"{part}_results.npy").is_file()

    test_split = sorted((out / "samples" / PERSON / "test").glob("*.npz"))
    assert len(test_split) == 4  # 4 test scenes of one 600-frame chunk each
    assert np.load(test_split[0])["body"].shape == (REPS, CROP_MAX_FRAMES, POSE_DIM)
    report = out / "eval" / f"{PERSON}_test.json"
    assert json.loads(report.read_text()) and str(report) in text

    # A second run finds every step done with the same settings; only the cheap evaluation reruns.
    before = (clips / "long.npz").stat().st_mtime_ns
    assert main(["--out", str(out), *SMALLEST]) == 0
    steps = capsys.readouterr().out.split("\nsteps:\n")[1].split("\n\n")[0].splitlines()
    assert len(steps) == 9
    assert all(line.endswith("skipped") for line in steps if "evaluate" not in line), steps
    assert (clips / "long.npz").stat().st_mtime_ns == before


def test_a_step_reruns_when_its_settings_change_and_removes_its_old_outputs(tmp_path):
    demo = Demo(argparse.Namespace(out=tmp_path, nproc=1))
    output = tmp_path / "made"
    calls = []

    def work():
        output.mkdir()
        (output / f"file{len(calls)}").touch()
        calls.append(1)

    for settings in ({"command": ["a"]}, {"command": ["a"]}, {"command": ["b"]}):
        demo.step("one step", settings, [output], work)
    assert len(calls) == 2 and [p.name for p in output.iterdir()] == ["file1"]
    assert [took is None for _, took in demo.timings] == [False, True, False]


def test_a_failing_step_is_named_and_bad_settings_are_refused(tmp_path, capsys):
    with pytest.raises(StepFailed, match="demo step 'PXB184: build shards' failed .* a2p data build"):
        run_command("PXB184: build shards", "a2p.cli.data", ["build", "--src", str(tmp_path / "nothing"),
                                                            "--out", str(tmp_path / "shards")])  # fmt: skip
    assert main(["--out", str(tmp_path / "demo"), "--seconds", "10"]) == 2
    assert "--seconds must be at least 20" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
