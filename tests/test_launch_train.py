"""The training sbatch script on a real single-node SLURM: 2 ranks, a TERM mid-run, requeue, resume."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START_SLURM = ROOT / "tests" / "slurm" / "start_local_slurm.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a local SLURM needs root"),
    pytest.mark.skipif(shutil.which("apt-get") is None and shutil.which("sbatch") is None, reason="no SLURM"),
]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_state(job: str) -> str:
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip()


def test_preempted_job_saves_requeues_and_resumes(tmp_path):
    subprocess.run(["bash", str(START_SLURM)], check=True, timeout=300)
    run_dir = tmp_path / "run"
    log = tmp_path / "job.out"
    steps = 30
    env = {
        **os.environ,
        "A2P_ROOT": str(ROOT),
        "A2P_PYTHON": sys.executable,
        "A2P_TASK": "toy",
        "A2P_RUN_DIR": str(run_dir),
        "A2P_PROCS_PER_NODE": "2",
        "A2P_MAIN_PORT": "29531",
        "OMP_NUM_THREADS": "1",
        "A2P_TRAIN_ARGS": (
            f"--max-steps {steps} --set task.step_sleep=0.3 --set train.checkpoint.interval=5 "
            "--set train.log.interval=5 --set train.precision=fp32"
        ),
    }
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--output",
            str(log),
            "--time=10",
            str(ROOT / "launch" / "train_one_node.sbatch"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    job = submit.stdout.strip().split(";")[0]
    latest = run_dir / "checkpoints" / "latest"
    try:
        wait_for(latest.exists, 120, "the first checkpoint")
        subprocess.run(["scancel", "--signal=TERM", job], check=True)
        wait_for(
            lambda: log.exists() and "requeueing job" in log.read_text(), 120, "the job to requeue itself"
        )
        wait_for(
            lambda: (run_dir / "checkpoints" / f"step_{steps:06d}").is_dir(), 240, "the resumed run to finish"
        )
        wait_for(lambda: job_state(job) == "", 60, "the job to leave the queue")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    text = log.read_text()
    preempted = [
        json.loads(meta.read_text())
        for meta in (run_dir / "checkpoints").glob("step_*/meta.json")
        if json.loads(meta.read_text())["reason"] == "preempted"
    ]
    # the first run stopped at an agreed step on both ranks, saved and requeued itself ...
    assert "requeueing job" in text, text
    assert "restart 1" in text, text
    # ... (keep-last-K may have pruned the preempted checkpoint itself, but the log names it)
    stopped_at = [line for line in text.splitlines() if "stopping at step" in line]
    assert stopped_at, text
    step = int(stopped_at[0].split("stopping at step")[1].split()[0])
    assert 0 < step < steps
    assert all(p["world_size"] == 2 for p in preempted)
    # ... and the requeued run resumed from that step and finished
    assert f"at step {step}" in text.split("restart 1", 1)[1], text
    final = json.loads((run_dir / "checkpoints" / f"step_{steps:06d}" / "meta.json").read_text())
    assert final["reason"] == "final" and final["world_size"] == 2
