"""The same global batches on any world size: real torchrun processes train the body model.

With dropout 0, 4 steps on 2 ranks equal 4 steps on 1 rank, and 2 steps on 2 ranks resumed on 1
rank, at the same `train.global_batch_size` (DDP and ZeRO-2): every sample's crop, timestep,
noise and condition dropout come from the global order, not from a rank's stream.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "--preset", "debug", "--set", "train.precision=fp32", "--set", "train.global_batch_size=4",
    "--set", "task.model.dropout=0", "--set", "task.model.conv_head_dropout=0", "--set", "train.ema.enabled=false",
    "--set", "train.checkpoint.interval=2", "--set", "train.schedule.total_steps=4",  # one LR schedule for every run
]  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(ranks: int, data: Path, run: Path, steps: int, *extra: str) -> None:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
         "--master_addr", "127.0.0.1", "--master_port", str(_port())]
        if ranks > 1
        else [sys.executable]
    )  # fmt: skip
    cmd = [*launcher, "-m", "a2p.cli.train", "body", "--data", str(data), "--run-dir", str(run),
           "--max-steps", str(steps), *COMMON, *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step_{step:06d}" / "model.pt", weights_only=True)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("backend", ["ddp", "zero2"])
def test_two_ranks_equal_one_rank_and_a_resume_on_one_rank(tiny_shards, tmp_path, backend):
    data = tiny_shards["plain"]
    extra = ["--deepspeed", str(REPO / "ds_configs" / "zero2.json")] if backend == "zero2" else []
    _train(1, data, tmp_path / "one", 4, *extra)
    _train(2, data, tmp_path / "two", 4, *extra)
    _train(2, data, tmp_path / "moved", 2, *extra)
    _train(1, data, tmp_path / "moved", 4, *extra, "--resume", "latest")
    one = _weights(tmp_path / "one", 4)
    assert _max_difference(one, _weights(tmp_path / "two", 4)) < 1e-5
    assert _max_difference(one, _weights(tmp_path / "moved", 4)) < 1e-5
    # other samples would move the weights by about a step's update: steps 3 and 4 moved them 6e-5
    assert _max_difference(one, _weights(tmp_path / "one", 2)) > 4e-5


def test_a_corrupt_shard_mid_epoch_is_named_and_no_rank_hangs(tmp_path):
    """Two ranks read a split whose third shard is garbled: the run stops naming it, promptly."""
    from loader_shards import write_shards

    data = tmp_path / "TXB805"
    write_shards(data, {"train": [1300] * 4, "val": [700]}, per_shard=2)  # 4 shards of 2 windows
    victim = data / "train-000002.tar"
    raw = victim.read_bytes()
    victim.write_bytes(raw[:100] + b"\x17" * 400 + raw[500:])  # same size, a broken header
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_port())]  # fmt: skip
    cmd = [*launcher, "-m", "a2p.cli.train", "body", "--data", str(data), "--run-dir", str(tmp_path / "run"),
           "--max-steps", "8", *COMMON]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "train-000002.tar" in done.stderr and "cannot read window" in done.stderr
