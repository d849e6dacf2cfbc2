"""The trainer on the toy task: exact resume, EMA per optimizer step, preemption, refusals, metrics."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_utils import load_pt, read_scalars, scalar_tags, start_training, toy_config

from a2p.errors import A2PError, ConfigError
from a2p.training import train
from a2p.training.run_dir import latest_checkpoint, list_checkpoints, read_meta
from a2p.training.signals import EXIT_PREEMPTED

HERE = Path(__file__).parent

# Dropout draws from the torch RNG and accumulation spans micro-steps, so an exact resume needs
# the RNG, the data position, the optimizer, the schedule and the EMA all restored.
EXACT = (
    "toy.dropout=0.1",
    "train.grad_accum=2",
    "train.schedule.warmup_steps=2",
    "train.schedule.total_steps=8",
    "train.log.interval=1",
    "train.checkpoint.interval=2",
)


def _exact(*extra):
    return toy_config(*(s.replace("toy.", "task.") for s in EXACT), *extra)


def test_stop_and_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train("toy", _exact("train.max_steps=8"), whole).step == 8
    assert train("toy", _exact("train.max_steps=3"), parts).step == 3
    result = train("toy", _exact("train.max_steps=8"), parts, resume="latest")
    assert result.step == 8 and not result.preempted

    expected, got = read_scalars(whole, "train/loss"), read_scalars(parts, "train/loss")
    assert sorted(got) == list(range(1, 9))
    for step in range(4, 9):
        assert got[step] == expected[step], f"loss differs at step {step}"
    for name in ("model.pt", "ema.pt", "optimizer.pt", "scheduler.pt"):
        a, b = (
            load_pt(whole / "checkpoints/step_000008", name),
            load_pt(parts / "checkpoints/step_000008", name),
        )
        assert _equal(a, b), f"{name} differs after resume"


def test_sigkill_after_a_checkpoint_then_resume_matches_bit_for_bit(tmp_path):
    settings = (*EXACT, "task.step_sleep=0.05", "train.max_steps=12", "train.schedule.total_steps=12")
    settings = tuple(s.replace("toy.", "task.") for s in settings if "total_steps=8" not in s)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train("toy", toy_config(*settings), whole)

    cmd = [sys.executable, str(HERE / "trainer_utils.py"), str(killed)]
    for item in settings:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while latest_checkpoint(killed / "checkpoints") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no chance to save: a node failure
        proc.wait(timeout=30)
    finally:
        proc.kill()
    stopped = read_meta(latest_checkpoint(killed / "checkpoints"))["step"]
    assert 0 < stopped < 12
    assert train("toy", toy_config(*settings), killed, resume="latest").step == 12
    expected, got = read_scalars(whole, "train/loss"), read_scalars(killed, "train/loss")
    for step in range(stopped + 1, 13):
        assert got[step] == expected[step], f"loss differs at step {step}"
    a, b = (
        load_pt(whole / "checkpoints/step_000012", "model.pt"),
        load_pt(killed / "checkpoints/step_000012", "model.pt"),
    )
    assert _equal(a, b)


def test_schedule_and_deepspeed_config_checks(tmp_path):
    from a2p.training.backends.deepspeed import deepspeed_config
    from a2p.training.optim import lr_factor

    cfg = toy_config(
        "train.max_steps=10", "train.schedule.warmup_steps=2", "train.schedule.min_lr_ratio=0.1"
    ).train
    assert [lr_factor(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(6, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_factor(10, cfg) == pytest.approx(0.1)

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}))
    bad = toy_config("train.backend=deepspeed", f"train.deepspeed_config={ds}").train
    with pytest.raises(
        ConfigError, match="train_micro_batch_size_per_gpu is 16, but the trainer config implies 4"
    ):
        deepspeed_config(bad, world_size=2)
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}}))
    filled = deepspeed_config(bad, world_size=2)
    assert (filled["train_batch_size"], filled["bf16"]["enabled"], filled["gradient_clipping"]) == (
        8,
        False,
        1.0,
    )


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_ema_moves_once_per_optimizer_step_not_per_micro_step(tmp_path):
    cfg = toy_config(
        "train.grad_accum=3",
        "train.max_steps=4",
        "train.checkpoint.interval=1",
        "train.checkpoint.keep=0",
        "train.ema.decay=0.5",
        "train.ema.start_step=1",
    )
    train("toy", cfg, tmp_path)
    root = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [1, 2, 3, 4]
    ema = load_pt(root / "step_000004", "ema.pt")
    assert ema["num_updates"] == 4
    weights = [load_pt(root / f"step_{s:06d}", "model.pt") for s in range(1, 5)]
    for name, averaged in ema["params"].items():
        expected = weights[0][name].clone()
        for w in weights[1:]:
            expected = 0.5 * expected + 0.5 * w[name]
        assert torch.allclose(averaged, expected, atol=1e-7), name


def test_sigusr1_saves_and_exits_within_the_step(tmp_path):
    cmd = [
        sys.executable,
        str(HERE / "trainer_utils.py"),
        str(tmp_path),
        "--set",
        "train.max_steps=100000",
        "--set",
        "task.step_sleep=0.02",
        "--set",
        "train.checkpoint.interval=100000",
        "--set",
        "train.log.interval=5",
    ]
    proc, lines, reader = start_training(cmd)
    try:
        time.sleep(0.5)  # some steps in
        sent = time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        rc = proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    reader.join(5)
    log = "".join(lines)
    assert rc == EXIT_PREEMPTED, log
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    saved = latest_checkpoint(tmp_path / "checkpoints")
    meta = read_meta(saved)
    assert meta["reason"] == "preempted" and 0 < meta["step"] < 100000
    assert f"stopping at step {meta['step']} after SIGUSR1" in log
    assert read_scalars(tmp_path, "train/loss")  # metrics were flushed


def test_run_dir_of_another_task_is_refused_before_any_compute(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"task": "face"}))
    with pytest.raises(A2PError, match="holds a 'face' run; it cannot continue as task 'toy'"):
        train("toy", toy_config("train.max_steps=2"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_fresh_start_in_a_used_run_dir_is_refused_and_latest_without_checkpoint_starts(tmp_path):
    result = train("toy", toy_config("train.max_steps=2"), tmp_path, resume="latest")
    assert result.step == 2 and json.loads((tmp_path / "config.json").read_text())["train"]["max_steps"] == 2
    with pytest.raises(A2PError, match="already has checkpoints up to step 2; pass --resume latest"):
        train("toy", toy_config("train.max_steps=4"), tmp_path)


def test_unknown_config_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown config key 'train.optimizer.lrr'"):
        toy_config("train.optimizer.lrr=0.1")
    with pytest.raises(ConfigError, match="unknown config key 'task.widht'"):
        toy_config("task.widht=3")
    with pytest.raises(ConfigError, match="'train.backend': 'fsdp' is not one of"):
        toy_config("train.backend=fsdp")


def test_tensorboard_tags_and_bf16(tmp_path):
    cfg = toy_config(
        "train.max_steps=4", "train.log.interval=2", "train.log.eval_interval=2", "train.precision=bf16"
    )
    train("toy", cfg, tmp_path)
    tags = scalar_tags(tmp_path)
    expected = {
        "train/loss",
        "train/mse",
        "train/sample_mse",
        "train/grad_norm",
        "train/lr",
        "perf/samples_per_sec",
        "perf/values_per_sec",
        "perf/step_time",
        "perf/data_wait_share",
        "perf/peak_mem_mb",
        "eval/mse",
    }
    assert expected <= tags, expected - tags
    assert sorted(read_scalars(tmp_path, "train/loss")) == [2, 4]
    assert read_scalars(tmp_path, "perf/samples_per_sec")[2] > 0


def test_cli_trains_resumes_and_reports_bad_keys(tmp_path, capsys):
    from a2p.cli.main import main

    quiet = ["--set", "train.log.progress_bar=false", "--set", "train.precision=fp32"]
    assert (
        main(["train", "toy", "--run-dir", str(tmp_path), "--max-steps", "2", "--preset", "debug", *quiet])
        == 0
    )
    assert (
        main(["train", "toy", "--run-dir", str(tmp_path), "--max-steps", "3", "--resume", "latest", *quiet])
        == 0
    )
    assert read_meta(latest_checkpoint(tmp_path / "checkpoints"))["step"] == 3
    capsys.readouterr()
    assert main(["train", "toy", "--run-dir", str(tmp_path), "--data", "123", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["data"] == "123"
    assert main(["train", "toy", "--run-dir", str(tmp_path), "--set", "train.optimizer.lrr=1"]) == 2
    assert "unknown config key 'train.optimizer.lrr'" in capsys.readouterr().err
