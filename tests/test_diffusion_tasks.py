"""The face and body tasks on real shards: training, exact resume through the loader, refusals."""

from pathlib import Path

import pytest
import torch
from test_train_eval_metrics import assert_motion_figure_logged

from a2p.cli.train import main as train_main


@pytest.fixture
def shards(tiny_shards):
    return tiny_shards


def train(task: str, data: Path, run_dir: Path, steps: int, *extra: str) -> int:
    args = [
        task,
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--preset",
        "debug",
        "--max-steps",
        str(steps),
    ]
    settings = [
        "train.batch_size=2",
        "train.precision=fp32",
        "train.checkpoint.interval=2",
        "train.log.interval=1",
        "train.schedule.total_steps=4",  # a stop-and-resume keeps the whole run's LR schedule
    ]
    for setting in settings:
        args += ["--set", setting]
    return train_main([*args, *extra])


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"step_{step:06d}" / "model.pt", map_location="cpu")


def test_body_resume_through_the_loader_is_exact(shards, tmp_path):
    assert train("body", shards["plain"], tmp_path / "straight", 4) == 0
    assert train("body", shards["plain"], tmp_path / "resumed", 2) == 0
    assert train("body", shards["plain"], tmp_path / "resumed", 4, "--resume", "latest") == 0
    straight, resumed = final_weights(tmp_path / "straight", 4), final_weights(tmp_path / "resumed", 4)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # training moved the weights away from their initialization
    first = final_weights(tmp_path / "resumed", 2)
    assert any(not torch.equal(first[name], straight[name]) for name in straight)


def test_face_trains_on_precomputed_features(shards, tmp_path):
    assert train("face", shards["mel"], tmp_path / "face", 2) == 0
    assert (tmp_path / "face" / "checkpoints" / "step_000002" / "model.pt").is_file()


def test_features_that_do_not_fit_the_model_are_refused(shards, tmp_path, capsys):
    code = train("face", shards["mel"], tmp_path / "bad", 1, "--set", "task.model.audio_dim=32")
    assert code == 2
    err = capsys.readouterr().err
    assert "mel features of width 160" in err and "audio_dim is 32" in err
    assert not (tmp_path / "bad" / "checkpoints").exists() or not any(
        (tmp_path / "bad" / "checkpoints").iterdir()
    )


def test_wrong_guide_setting_for_the_task_is_refused(shards, tmp_path, capsys):
    assert (
        train("face", shards["plain"], tmp_path / "guided_face", 1, "--set", "task.model.guide_dim=104") == 2
    )
    assert "does not fit the face task" in capsys.readouterr().err


def test_eval_steps_log_a_sample_and_its_figure(shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "eval"
    extra = ["--set", "train.log.eval_interval=2", "--set", "task.eval_sampler=ddim5"]
    assert train("body", shards["plain"], run, 2, *extra) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "eval/sample_mse" in events.Tags()["scalars"]
    assert events.Scalars("eval/sample_mse")[0].value > 0
    assert_motion_figure_logged(events)  # one image of the 4-panel figure's size, not blank
