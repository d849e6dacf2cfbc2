"""The sampling sbatch script on a real single-node SLURM: 2 srun tasks give the 1-process outputs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_launch_train import START_SLURM, job_state, wait_for

from a2p.cli.sample import main as sample_main

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a local SLURM needs root"),
    pytest.mark.skipif(shutil.which("apt-get") is None and shutil.which("sbatch") is None, reason="no SLURM"),
]


def test_two_srun_tasks_sample_what_one_process_samples(model_args, tmp_path):
    subprocess.run(["bash", str(START_SLURM)], check=True, timeout=300)
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(5)
    for name in ("x", "y", "z"):
        sf.write(clips / f"{name}.wav", rng.uniform(-0.5, 0.5, (48_000 * 2, 2)), 48_000)
    args = [*model_args, "--reps", "2", "--sampler", "ddim4", "--seed", "3", str(clips)]
    assert sample_main([*args, "--out", str(tmp_path / "one")]) == 0

    log = tmp_path / "job.out"
    env = {
        **os.environ,
        "A2P_PYTHON": sys.executable,
        "A2P_MAIN_PORT": "29541",
        "OMP_NUM_THREADS": "1",
        "A2P_SAMPLE_ARGS": " ".join([*args, "--out", str(tmp_path / "slurm")]),
    }
    submit = subprocess.run(
        ["sbatch", "--parsable", "--ntasks", "2", "--output", str(log), "--time=10",
         str(ROOT / "launch" / "sample.sbatch")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submit.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: job_state(job) == "", 240, "the sampling job to finish")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    text = log.read_text()
    assert "rank 0/2" in text and "rank 1/2" in text, text
    for name in ("x", "y", "z"):
        one, two = np.load(tmp_path / "one" / f"{name}.npz"), np.load(tmp_path / "slurm" / f"{name}.npz")
        for key in ("face", "body", "keyframes"):
            np.testing.assert_allclose(
                one[key], two[key], rtol=1e-4, atol=1e-3, err_msg=f"{name} {key}\n{text}"
            )
