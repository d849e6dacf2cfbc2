"""launch/build_shards.sbatch + launch/merge_shards.sbatch on the real local SLURM: an array build of
2 people x 2 scene groups, then the merge step with `--dependency=afterok`; the result verifies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import TINY_SCENES, TINY_SECONDS, make_dataset

from a2p.cli.data import main
from a2p.data.format import load_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
START_SLURM = REPO / "tests" / "slurm" / "start_local_slurm.sh"
PEOPLE = ("PXB184", "TXB805")
PARTS = 2
SLURM_TIMEOUT_S = 300


def _slurm() -> None:
    """Start the local SLURM, or skip saying why it cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM needs root to start (tests/slurm/start_local_slurm.sh); CI runs as root")
    started = subprocess.run(
        ["bash", str(START_SLURM)], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S
    )
    if started.returncode != 0 or shutil.which("sbatch") is None:
        pytest.skip(f"no local SLURM (sbatch missing or start failed): {started.stderr[-500:]}")


def _sbatch(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sbatch", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S
    )


def test_array_build_then_merge_verifies(tmp_path: Path) -> None:
    _slurm()
    raw = tmp_path / "raw"
    for person in PEOPLE:
        make_dataset(raw, person=person, scenes=TINY_SCENES, seconds=TINY_SECONDS)
    shards = tmp_path / "shards"
    env = {
        **os.environ,
        "A2P_DATA": str(raw),
        "A2P_SHARDS": str(shards),
        "A2P_PEOPLE": " ".join(PEOPLE),
        "A2P_PARTS": str(PARTS),
        "A2P_BUILD_ARGS": "--window 30 --hop 15 --max-shard-mb 0.2",
        "A2P_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
    }
    tasks = len(PEOPLE) * PARTS
    build = _sbatch(
        [
            "--parsable",
            f"--array=0-{tasks - 1}",
            f"--output={tmp_path}/build-%A_%a.out",
            str(REPO / "launch/build_shards.sbatch"),
        ],
        env,
        tmp_path,
    )
    assert build.returncode == 0, build.stderr
    job = build.stdout.strip().split(";")[0]
    merge = _sbatch(
        [
            "--wait",
            f"--dependency=afterok:{job}",
            "--kill-on-invalid-dep=yes",
            f"--output={tmp_path}/merge.out",
            str(REPO / "launch/merge_shards.sbatch"),
        ],
        env,
        tmp_path,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("*.out")))
    assert merge.returncode == 0, f"{merge.stderr}\n{logs}"
    for person in PEOPLE:
        manifest = load_manifest(shards / person)
        names = [s.name for split in manifest.splits.values() for s in split.shards]
        assert any(name.endswith("-010000.tar") for name in names), names  # the second scene group's range
        assert main(["verify", str(shards / person)]) == 0
    assert "verified" in (tmp_path / "merge.out").read_text()
