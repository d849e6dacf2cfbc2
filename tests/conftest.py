"""Shared fixtures: one tiny synthesized person built into shards once per test session."""

from pathlib import Path

import pytest
import torch


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
