"""Shared fixtures: one tiny synthesized person built into shards once per test session.

MKL's float32 exp, sin and cos (torch's CPU vml) take a code path chosen by the CPU: AVX2 and
AVX-512 machines give other last bits than older or AMD ones, and a float32 table computed that
way (the lip regressor's sinusoids, rotary frequencies) moves a float64 golden comparison by
1e-6. The golden fixtures were made on MKL's compatible path, so the suite pins it
(`MKL_CBWR=COMPATIBLE`, set before torch loads MKL, inherited by every subprocess) and gives the
same numbers on every CPU.
"""

import os

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, Path]:
    """Shards of one synthesized person (8 scenes x 20 s): without and with precomputed mel features."""
    from a2p.cli.data import main as data_main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_shards")
    assert (
        data_main(["synth", "--out", str(root / "raw"), "--scenes", "8", "--seconds", "20", "--seed", "3"])
        == 0
    )
    src = str(root / "raw" / "PXB184")
    assert data_main(["build", "--src", src, "--out", str(root / "plain")]) == 0
    assert data_main(["build", "--src", src, "--out", str(root / "mel"), "--features", "mel"]) == 0
    return {"plain": root / "plain", "mel": root / "mel"}


@pytest.fixture(scope="session")
def exports(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    """Exported face, body, vq and guide models, each trained for one step on the tiny shards."""
    from a2p.cli.export import main as export_main
    from a2p.cli.train import main as train_main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exports")
    common = [
        "--preset",
        "debug",
        "--max-steps",
        "1",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.precision=fp32",
    ]
    files: dict[str, Path] = {}
    for task in ("face", "body", "vq", "guide"):
        extra = ["--vq", str(files["vq"])] if task == "guide" else []
        run = ["--data", str(tiny_shards["plain"]), "--run-dir", str(root / task)]
        assert train_main([task, *run, *common, *extra]) == 0
        files[task] = root / f"{task}.safetensors"
        assert export_main([str(root / task), "--out", str(files[task])]) == 0
    return files


@pytest.fixture(scope="session")
def model_args(exports: dict[str, Path]) -> list[str]:
    """--face F --body B --guide G --vq V of the exports."""
    return [arg for name in ("face", "body", "guide", "vq") for arg in (f"--{name}", str(exports[name]))]
