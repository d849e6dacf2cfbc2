"""Motion metrics at eval steps: masked chunks, the too-few-frames fallback, TensorBoard scalars of a
real face and body run, and two gloo ranks scoring exactly what one rank scores."""

import io
import json
import logging
import math
import os
import socket
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from a2p.cli.train import main as train_main
from a2p.training.diffusion_tasks import EvalWindow, valid_chunks, window_metrics
from a2p.training.figures import motion_figure
from a2p.training.tasks import TaskContext, build_task, load_run_config

METRIC_TAGS = ("fd_g", "fd_k", "div_g", "div_k", "gt_div_g", "gt_div_k")
EVAL_SETTINGS = ("task.eval_sampler=ddim2", "task.eval_metric_windows=2")


def _window(
    index: int, frames: int, width: int, valid: np.ndarray | None = None, seed: int = 0
) -> EvalWindow:
    rng = np.random.default_rng(seed)
    return EvalWindow(
        index=index,
        generated=rng.normal(size=(frames, width)).astype(np.float32),
        real=rng.normal(size=(frames, width)).astype(np.float32),
        valid=np.ones(frames, dtype=bool) if valid is None else valid,
    )


def test_invalid_frames_never_reach_the_metrics():
    valid = np.ones(50, dtype=bool)
    valid[[7, 8, 30]] = False  # runs of 7, 21 and 19 frames
    dirty = _window(0, 50, 3, valid)
    dirty.generated[~valid] = 1e6
    dirty.real[~valid] = -1e6
    generated, real = valid_chunks([dirty], chunk=5)
    assert generated.shape == real.shape == (1 + 4 + 3, 5, 3)  # remainders of runs dropped
    assert np.abs(real).max() < 1e3 and np.abs(generated).max() < 1e3
    # the same frames, laid out as clean windows, give the same chunks
    runs = [(0, 7), (9, 30), (31, 50)]
    clean = [
        EvalWindow(i, dirty.generated[a:b], dirty.real[a:b], np.ones(b - a, dtype=bool))
        for i, (a, b) in enumerate(runs)
    ]
    assert np.array_equal(valid_chunks(clean, chunk=5)[1], real)
    # padding rows (no valid frame) give nothing
    assert valid_chunks([_window(0, 10, 3, np.zeros(10, dtype=bool))], chunk=5)[0].shape == (0, 5, 3)


def test_too_few_frames_skip_only_the_frechet_distances(caplog):
    with caplog.at_level(logging.WARNING, logger="a2p"):
        values = window_metrics([_window(0, 8, 16)], chunk=4)  # 8 frames, width 16
    assert "FD_g and FD_k skipped" in caplog.text and "too few for a covariance" in caplog.text
    assert "fd_g" not in values and "fd_k" not in values
    assert all(
        math.isfinite(values[k]) and values[k] >= 0 for k in ("div_g", "div_k", "gt_div_g", "gt_div_k")
    )

    enough = window_metrics([_window(0, 200, 4)], chunk=20)
    assert set(METRIC_TAGS) <= set(enough) and enough["metric_frames"] == 200.0


def _eval_run(task: str, data: Path, run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [task, "--data", str(data), "--run-dir", str(run_dir), "--preset", "debug", "--max-steps", "2"]
    settings = ("train.batch_size=1", "train.precision=fp32", "train.log.eval_interval=2", *EVAL_SETTINGS)
    for setting in settings:
        args += ["--set", setting]
    assert train_main(args) == 0
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert_motion_figure_logged(events)
    return {tag: events.Scalars(f"eval/{tag}")[-1].value for tag in (*METRIC_TAGS, "sample_mse")}


def assert_motion_figure_logged(events) -> None:
    """The eval step's real-vs-generated figure is an image summary under `eval/motion` that decodes
    to the figure's size and is not blank."""
    [image] = events.Images("eval/motion")
    expected = motion_figure(torch.zeros(3, 8), torch.zeros(3, 8))
    width, height = (int(round(v)) for v in expected.get_size_inches() * expected.dpi)
    assert (image.width, image.height) == (width, height)
    pixels = matplotlib.image.imread(io.BytesIO(image.encoded_image_string), format="png")
    assert pixels.shape[:2] == (height, width)
    assert (pixels[:, :, :3] < 0.5).mean() > 0.005  # axes, labels and curves drawn


@pytest.mark.parametrize("task, shards", [("face", "mel"), ("body", "plain")])
def test_eval_steps_write_motion_metrics_to_tensorboard(tiny_shards, tmp_path, task, shards):
    values = _eval_run(task, tiny_shards[shards], tmp_path / task)
    for tag, value in values.items():
        assert math.isfinite(value) and value >= 0, (tag, value)
    assert values["fd_g"] > 0 and values["gt_div_g"] > 0


def _face_task(data: Path, *overrides: str):
    task = build_task("face", load_run_config("face", "debug", overrides=(*EVAL_SETTINGS, *overrides)).task)
    task.audio.check_shards(str(data))
    return task


def _evaluate(data: Path, rank: int, world_size: int) -> dict[str, float]:
    """Face evaluation of freshly initialised debug weights on this rank; rank 0's scalars."""
    task = _face_task(data)
    torch.manual_seed(0)
    model = task.build_model().eval()
    ctx = TaskContext(
        rank, world_size, torch.device("cpu"), seed=5, batch_size=1, data=str(data), run_dir=data
    )
    with torch.no_grad():
        results = task.evaluate(model, ctx)
    return {k: float(v) for k, v in results.items() if isinstance(v, float)}


def _rank_main(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    from a2p import distributed

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    distributed.init_process_group(backend="gloo")
    try:
        values = _evaluate(Path(data), rank, world_size)
        if rank == 0:
            Path(out).write_text(json.dumps(values))
        else:
            assert values == {}, values
    finally:
        distributed.destroy_process_group()


def test_two_gloo_ranks_score_what_one_rank_scores(tiny_shards, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_ranks.json"
    mp.start_processes(
        _rank_main, args=(2, port, str(tiny_shards["mel"]), str(out)), nprocs=2, start_method="spawn"
    )
    two = json.loads(out.read_text())
    one = _evaluate(tiny_shards["mel"], 0, 1)
    assert set(METRIC_TAGS) <= set(one) and one.keys() == two.keys()
    for name in one:
        assert two[name] == pytest.approx(one[name], rel=1e-6, abs=0), name


def test_ranks_past_the_split_sample_nothing(tiny_shards):
    """The val split holds 2 windows: rank 2 of 3 only has a padding row, which is not sampled."""
    task = _face_task(tiny_shards["mel"], "task.eval_metric_windows=8")
    data = str(tiny_shards["mel"])
    ctx = TaskContext(2, 3, torch.device("cpu"), seed=0, batch_size=1, data=data, run_dir=Path(data))
    assert list(task._eval_batches(ctx)) == []
    ctx = TaskContext(1, 3, torch.device("cpu"), seed=0, batch_size=1, data=data, run_dir=Path(data))
    assert [index for index, _ in task._eval_batches(ctx)] == [1]
