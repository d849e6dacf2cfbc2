"""Two real processes on gloo, started by torchrun (`accelerate launch --cpu --num_processes 2`
starts only one): data-parallel equivalence, resume on another rank count, preemption by signal."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_utils import load_pt, start_training, toy_config

from a2p.training import train
from a2p.training.run_dir import latest_checkpoint, read_meta

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(run_dir: Path, *overrides: str, resume: str | None = None) -> list[str]:
    cmd = [
        *TORCHRUN,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
    ]
    cmd += [str(HERE / "trainer_utils.py"), str(run_dir)]
    if resume:
        cmd += ["--resume", resume]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_torchrun(run_dir: Path, *overrides: str, resume: str | None = None) -> subprocess.CompletedProcess:
    """Run two ranks to completion; once more on a fresh port if another process took ours."""
    for _ in range(2):
        cmd = _torchrun(run_dir, *overrides, resume=resume)
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            return done
    return done


PARITY = ("train.max_steps=5", "train.grad_accum=2", "train.checkpoint.interval=5", "train.ema.decay=0.5")


def test_two_ranks_match_one_rank_with_the_same_global_batch(tmp_path, caplog):
    two, one = tmp_path / "two", tmp_path / "one"
    done = _run_torchrun(two, *PARITY, "train.batch_size=4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 rank(s) (ddp, fp32, global batch 16)" in done.stderr
    train("toy", toy_config(*PARITY, "train.batch_size=8"), one)

    ckpt2, ckpt1 = two / "checkpoints/step_000005", one / "checkpoints/step_000005"
    assert read_meta(ckpt2)["world_size"] == 2
    for name in ("model.pt",):
        a, b = load_pt(ckpt2, name), load_pt(ckpt1, name)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    start = load_pt(ckpt1, "model.pt")
    assert any(not torch.equal(start[k], v) for k, v in load_pt(ckpt1, "ema.pt")["params"].items())
    ema2, ema1 = load_pt(ckpt2, "ema.pt")["params"], load_pt(ckpt1, "ema.pt")["params"]
    assert all(torch.allclose(ema2[k], ema1[k], atol=1e-6, rtol=0) for k in ema1)

    # The two-rank run continues on one rank: it says what it cannot keep, and carries on.
    with caplog.at_level(logging.WARNING, logger="a2p"):
        result = train(
            "toy", toy_config(*PARITY, "train.batch_size=8", "train.max_steps=7"), two, resume="latest"
        )
    assert result.step == 7
    assert "saved by 2 rank(s), this run has 1: per-rank random streams cannot be kept" in caplog.text
    assert "data positions carried over by the loader" in caplog.text


def test_sigterm_to_torchrun_stops_both_ranks_at_the_same_step(tmp_path):
    cmd = _torchrun(
        tmp_path,
        "train.max_steps=100000",
        "task.step_sleep=0.02",
        "train.checkpoint.interval=100000",
        "train.log.interval=1000",
    )
    proc, lines, reader = start_training(cmd, env=_env())
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # to torchrun only: it forwards SIGTERM to its workers
        proc.wait(timeout=45)
    finally:
        proc.kill()
    reader.join(5)
    log = "".join(lines)
    saved = latest_checkpoint(tmp_path / "checkpoints")
    assert saved is not None, log[-3000:]
    meta = read_meta(saved)
    assert meta["reason"] == "preempted" and meta["world_size"] == 2 and 0 < meta["step"] < 100000
    assert {"rank_00000.pt", "rank_00001.pt"} <= set(meta["files"])
    assert f"stopping at step {meta['step']} after SIGTERM" in log


def test_two_rank_zero2_matches_ddp_saves_resumes_and_resumes_on_one_rank(tmp_path):
    ds_json = tmp_path / "zero2.json"
    ds_json.write_text(
        json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"})
    )
    zero = (*PARITY, "train.batch_size=4", "train.backend=deepspeed", f"train.deepspeed_config={ds_json}")
    zero = (*zero, "train.checkpoint.interval=2", "train.checkpoint.keep=0", "train.max_steps=4")
    whole, part, ddp = tmp_path / "whole", tmp_path / "part", tmp_path / "ddp"
    done = _run_torchrun(whole, *zero)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 rank(s) (deepspeed, fp32, global batch 16)" in done.stderr
    meta = read_meta(whole / "checkpoints/step_000004")
    assert "deepspeed/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt" in meta["files"]

    # ZeRO-2 over two ranks computes what one DDP process does with the same global batch.
    train("toy", toy_config(*PARITY, "train.batch_size=8", "train.max_steps=4"), ddp)
    a, b = (
        load_pt(whole / "checkpoints/step_000004", "model.pt"),
        load_pt(ddp / "checkpoints/step_000004", "model.pt"),
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)

    # Resumed from step 2 (every rank loads its ZeRO shard), it reaches the same step-4 weights.
    done = _run_torchrun(part, *zero, resume=str(whole / "checkpoints/step_000002"))
    assert done.returncode == 0, done.stderr[-3000:]
    c = load_pt(part / "checkpoints/step_000004", "model.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)

    # One rank continues the two-rank ZeRO run (weights and Adam moments), saying what it drops.
    one = [sys.executable, str(HERE / "trainer_utils.py"), str(whole), "--resume", "latest"]
    for item in (*zero, "train.batch_size=8", "train.max_steps=5"):
        one += ["--set", item]
    done = subprocess.run(one, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved by 2 rank(s), this run has 1" in done.stderr
    assert "optimizer moments are re-cut from its universal form" in done.stderr
    assert read_meta(latest_checkpoint(whole / "checkpoints"))["world_size"] == 1


def test_a_stopped_rank_is_named_by_the_watchdog_and_the_job_exits_non_zero(tmp_path):
    """kill -STOP one of two ranks: the other says which step waits, and leaves at the timeout."""
    cmd = _torchrun(
        tmp_path, "train.max_steps=100000", "task.step_sleep=0.02", "train.checkpoint.interval=100000",
        "train.log.interval=1000", "train.dist_timeout_s=20", "train.watchdog_s=4",
    )  # fmt: skip
    proc, lines, reader = start_training(cmd, env=_env())
    workers: list[int] = []
    begin = time.monotonic()
    try:
        time.sleep(1.0)
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        workers = [int(pid) for pid in children]
        assert len(workers) == 2, children
        os.kill(workers[1], signal.SIGSTOP)
        code = proc.wait(timeout=120)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    reader.join(5)
    log = "".join(lines)
    assert code != 0 and time.monotonic() - begin < 120, log[-3000:]
    assert "rank 0: step" in log and "has not finished after" in log, log[-3000:]
