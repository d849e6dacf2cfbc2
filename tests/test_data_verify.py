"""`a2p data verify`: a clean build passes; truncated, corrupt, missing and unlisted shards are named."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from datasets import TINY_SCENES, TINY_SECONDS, make_dataset, read_tar

from a2p.cli.data import main
from a2p.constants import WRAPPED_POSE_CHANNEL
from a2p.data.format import MANIFEST_NAME, load_manifest
from data_tools.build import build
from data_tools.verify import verify_shards

WINDOW, HOP = 30, 15
MAX_SHARD_BYTES = 300_000


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = make_dataset(tmp_path_factory.mktemp("raw"), scenes=TINY_SCENES, seconds=TINY_SECONDS)
    out = tmp_path_factory.mktemp("shards") / src.name
    build(src, out, window_frames=WINDOW, hop_frames=HOP, max_shard_bytes=MAX_SHARD_BYTES)
    return out


@pytest.fixture
def shards(clean: Path, tmp_path: Path) -> Path:
    """A copy of the clean build to damage."""
    return Path(shutil.copytree(clean, tmp_path / clean.name))


def test_clean_build_verifies_and_prints_a_summary_per_split(
    clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(clean)]) == 0
    out = capsys.readouterr().out
    manifest = load_manifest(clean)
    for name, split in manifest.splits.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert f"{len(split.shards)} shards" in line and f"{split.samples} samples" in line
        assert f"{split.frames} frames" in line and " h" in line
    assert "verified" in out


def test_truncated_and_corrupt_shards_are_all_named(shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = load_manifest(shards)
    truncated = shards / manifest.splits["train"].shards[0].name
    corrupt = shards / manifest.splits["test"].shards[-1].name
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2 + 100])
    data = bytearray(corrupt.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data
    corrupt.write_bytes(bytes(data))
    assert main(["verify", str(shards)]) == 2
    err = capsys.readouterr().err
    assert f"{truncated}: " in err and "truncated" in err
    assert f"{corrupt}: sha256 differs" in err


def test_corrupt_tar_header_is_reported_not_raised(shards: Path) -> None:
    manifest = load_manifest(shards)
    path = shards / manifest.splits["val"].shards[0].name
    data = bytearray(path.read_bytes())
    data[0:100] = b"\x00" * 50 + b"garbage" * 7 + b"\x00"  # break the first header's name and checksum
    path.write_bytes(bytes(data))
    report = verify_shards(shards)
    assert not report.ok
    assert f"{path}: corrupt or truncated tar (bad checksum)" in report.problems


def test_unwrapped_pose_of_a_capture_1_person_is_named(shards: Path) -> None:
    path = shards / load_manifest(shards).splits["train"].shards[0].name
    samples = read_tar(path)
    key = next(iter(samples))
    body = np.load(io.BytesIO(samples[key]["body.npy"]))
    body[0, WRAPPED_POSE_CHANNEL] = 7.0  # beyond 2 pi: a shard of a build that skipped the wrap
    buffer = io.BytesIO()
    np.save(buffer, body)
    samples[key]["body.npy"] = buffer.getvalue()
    with tarfile.open(path, "w") as tar:
        for name, files in samples.items():
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{name}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert (
        f"{path}: sample {key}: body.npy channel 3 is not wrapped into [0, 2 pi)"
        in verify_shards(shards).problems
    )


def test_missing_and_unlisted_shards(shards: Path) -> None:
    manifest = load_manifest(shards)
    gone = shards / manifest.splits["val"].shards[0].name
    gone.rename(shards / "val-000099.tar")
    problems = verify_shards(shards).problems
    assert f"{gone}: listed in the manifest but missing" in problems
    assert f"{shards / 'val-000099.tar'}: a shard the manifest does not list" in problems


def test_manifest_counts_must_match_the_shards(shards: Path) -> None:
    text = (shards / MANIFEST_NAME).read_text()
    manifest = load_manifest(shards)
    first = manifest.splits["train"].shards[0]
    (shards / MANIFEST_NAME).write_text(
        text.replace(f'"samples": {first.samples},', f'"samples": {first.samples + 1},', 1)
    )
    problems = verify_shards(shards).problems
    assert any(
        f"{first.name}: holds {first.samples} samples, the manifest says {first.samples + 1}" in p
        for p in problems
    )


def test_no_manifest_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 2
    assert "no shard manifest here" in capsys.readouterr().err
