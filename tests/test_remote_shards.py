"""Shards beyond the local disk: served by a real `python -m http.server` on 127.0.0.1, or read
through a `pipe:` command, into a size-bounded cache; the same batches as the local folder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from loader_shards import write_shards

from a2p.cli.train import main as train_main
from a2p.data import build_train_loader
from a2p.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(local shard folder, its URL): 8 windows in 4 shards, served over HTTP for the module."""
    root = tmp_path_factory.mktemp("served")
    write_shards(root / "TXB805", {"train": [1300] * 4, "val": [700], "test": [700]}, per_shard=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/TXB805"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/manifest.json", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    yield root / "TXB805", url
    server.terminate()
    server.wait(timeout=10)


def rows(location, workers: int = 0) -> list:
    loader = build_train_loader(location, 2, seed=4, rank=0, world_size=1, num_workers=workers, audio=False)
    return [(b["draw"].tolist(), b["key"], b["start"].tolist(), b["body"]) for b in loader]


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (draws, keys, starts, body), (draws2, keys2, starts2, body2) in zip(a, b):
        assert (draws, keys, starts) == (draws2, keys2, starts2) and torch.equal(body, body2)


def test_http_and_pipe_shards_give_the_local_batches_within_the_cache_bound(served, tmp_path, monkeypatch):
    local, url = served
    shard_bytes = max(p.stat().st_size for p in local.glob("train-*.tar"))
    monkeypatch.setenv("A2P_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("A2P_SHARD_CACHE_GB", str(2.5 * shard_bytes / 1e9))  # room for two shards
    expected = rows(local)
    assert_same(rows(url), expected)
    assert_same(rows(url, workers=2), expected)
    cached = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tar")]
    assert 1 <= len(cached) <= 2 and sum(p.stat().st_size for p in cached) <= 2.5 * shard_bytes
    monkeypatch.setenv("A2P_SHARD_CACHE", str(tmp_path / "pipe-cache"))
    assert_same(rows(f"pipe:cat {local}/{{}}"), expected)


def test_a_corrupt_served_shard_is_named_by_its_url(served, tmp_path, monkeypatch):
    local, url = served
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in local.iterdir():
        data = path.read_bytes()
        if path.name == "train-000001.tar":
            data = data[:100] + b"\x17" * 400 + data[500:]
        (copy / path.name).write_bytes(data)
    monkeypatch.setenv("A2P_SHARD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"pipe:cat .*train-000001\.tar"):
        rows(f"pipe:cat {copy}/{{}}")
    with pytest.raises(DataError, match=rf"{url}/nothing-here/manifest.json: cannot be read"):
        rows(f"{url}/nothing-here")


def test_training_reads_served_shards_through_the_cache(served, tmp_path, monkeypatch):
    _, url = served
    monkeypatch.setenv("A2P_SHARD_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["body", "--data", url, "--run-dir", str(run), "--preset", "debug", "--max-steps", "2",
            "--set", "train.batch_size=2"]  # fmt: skip
    assert train_main(args) == 0
    assert (run / "checkpoints" / "step_000002" / "model.pt").is_file()
    assert any(p.name.endswith(".tar") for p in Path(tmp_path / "cache").iterdir())
