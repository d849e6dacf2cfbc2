"""Nothing non-finite reaches a checkpoint or an export: skipped steps, a bound, refused values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loader_shards import write_shards

from a2p.cli.export import main as export_main
from a2p.cli.train import main as train_main

torch.set_num_threads(1)

BAD = "scene00_000000"


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    """4 windows, one of which holds a NaN pose value."""
    root = tmp_path_factory.mktemp("poisoned") / "TXB805"
    write_shards(root, {"train": [1300, 1300], "val": [700]}, per_shard=2, nan_keys=frozenset({BAD}))
    return root


def train(data: Path, run: Path, *extra: str) -> int:
    return train_main(["body", "--data", str(data), "--run-dir", str(run), "--preset", "debug",
                       "--max-steps", "8", "--set", "train.batch_size=1", "--set", "train.precision=fp32",
                       "--set", "train.checkpoint.interval=1", "--set", "train.checkpoint.keep=0", *extra])  # fmt: skip


def saved_weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(p / "model.pt", weights_only=True) for p in sorted((run / "checkpoints").glob("step_*"))
    ]


def test_a_nan_sample_skips_its_steps_with_a_warning_and_the_weights_stay_finite(poisoned, tmp_path, capsys):
    assert train(poisoned, tmp_path / "run") == 0
    skips = [
        line for line in capsys.readouterr().err.splitlines() if "WARNING" in line and "skipped (" in line
    ]
    assert len(skips) == 2  # 8 draws over 4 windows: the bad one twice
    assert all(BAD in message and "train-000000.tar" in message for message in skips)
    weights = saved_weights(tmp_path / "run")
    assert len(weights) == 8 and all(torch.isfinite(t).all() for w in weights for t in w.values())


def test_past_the_bound_the_run_stops_naming_the_sample_and_saves_nothing_broken(poisoned, tmp_path, capsys):
    assert train(poisoned, tmp_path / "run", "--set", "train.max_skipped_steps=0") == 2
    err = capsys.readouterr().err
    assert "non-finite loss or gradient" in err and BAD in err and "train-000000.tar" in err
    weights = saved_weights(tmp_path / "run")
    assert len(weights) < 8 and all(torch.isfinite(t).all() for w in weights for t in w.values())


def test_an_infinite_setting_is_refused(poisoned, tmp_path, capsys):
    assert train(poisoned, tmp_path / "run", "--set", "train.optimizer.lr=1e400") == 2
    assert "train.optimizer.lr" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_export_refuses_non_finite_weights(poisoned, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(poisoned, run, "--set", "train.ema.enabled=false", "--max-steps", "1") == 0
    model = run / "checkpoints" / "step_000001" / "model.pt"
    state = torch.load(model, weights_only=True)
    name = next(iter(state))
    state[name] = state[name].clone().fill_(float("nan"))
    torch.save(state, model)
    assert export_main([str(run), "--out", str(tmp_path / "body.safetensors")]) == 2
    assert name in capsys.readouterr().err and not (tmp_path / "body.safetensors").exists()


def test_deepspeed_stops_at_the_first_non_finite_loss_naming_the_sample(poisoned, tmp_path):
    """In a process of its own: a one-process DeepSpeed run sets the launcher's variables for good."""
    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "a2p.cli.train", "body", "--data", str(poisoned), "--run-dir", str(run),
           "--preset", "debug", "--max-steps", "8", "--set", "train.batch_size=1", "--set", "train.precision=fp32",
           "--set", "train.checkpoint.interval=1", "--deepspeed", str(repo / "ds_configs" / "zero2.json")]  # fmt: skip
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the loss is not finite" in done.stderr and BAD in done.stderr
    for checkpoint in sorted((run / "checkpoints").glob("step_*")):
        assert all(
            torch.isfinite(t).all() for t in torch.load(checkpoint / "model.pt", weights_only=True).values()
        )
